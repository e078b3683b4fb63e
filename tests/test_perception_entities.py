"""Entity answers written as prose: the lead-in is not an entity, and 'no objects' is an answer."""
import warnings

import pytest

from mirage_ros.perception.entities import EntityParseWarning, parse_entities


@pytest.mark.parametrize("text, expected", [
    ("I see a person and a dog.", ["person", "dog"]),
    ("There are two cars and a dog.", ["cars", "dog"]),
    ("There is a person.", ["person"]),
    ("The image shows a bicycle, a bus", ["bicycle", "bus"]),
    ("Sure, I can see a robot and a cart.", ["robot", "cart"]),
])
def test_prose_lead_ins_are_dropped(text, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EntityParseWarning)
        assert parse_entities(text) == expected


@pytest.mark.parametrize("text", ["There are no movable objects in this image.", "No moving objects.",
                                  "there is no object", "Not any dynamic things here!", "There are no objects visible"])
def test_negative_sentences_are_a_silent_empty_answer(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EntityParseWarning)
        assert parse_entities(text) == []


def test_a_sentence_that_is_not_a_list_still_warns():
    with pytest.warns(EntityParseWarning):
        assert parse_entities("The image shows a red car parked next to a tree.") == []
    with pytest.warns(EntityParseWarning):  # a negation followed by more text is not "nothing"
        assert parse_entities("There are no objects except for the red car parked next to the big tree.") == []
