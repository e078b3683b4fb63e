"""The probe's action client against rclpy's goal-response race, replayed deterministically.

rclpy (Jazzy) sends a goal request and only then records its sequence number; a response taken by
another executor thread in between is dropped and the goal future never completes (seen in a full
test run on a loaded CPU: a 600 s hang). Here the response is handed to ``execute`` before
``send_goal_async`` registers the request, exactly what that thread does.
"""
import asyncio

from mirage_ros.ros.probe import action_client


def _early_answer(client, accepted: bool):
    from mirage_ros.action import Imagine

    resp = Imagine.Impl.SendGoalService.Response(accepted=accepted)
    asyncio.run(client.execute({"goal": (1, resp)}))  # the first request's sequence number is 1


def test_a_goal_response_before_registration_completes_the_future(probe):
    from rclpy.action import ActionClient

    from mirage_ros.action import Imagine

    ours = action_client(probe.node, Imagine, "/race_ours/imagine")
    _early_answer(ours, accepted=True)
    fut = ours.send_goal_async(Imagine.Goal())
    assert fut.done() and fut.result().accepted
    rejected = action_client(probe.node, Imagine, "/race_rejected/imagine")
    _early_answer(rejected, accepted=False)
    fut = rejected.send_goal_async(Imagine.Goal())
    assert fut.done() and not fut.result().accepted
    # rclpy's own client loses it: this is the defect the wrapper exists for
    plain = ActionClient(probe.node, Imagine, "/race_plain/imagine")
    _early_answer(plain, accepted=True)
    assert not plain.send_goal_async(Imagine.Goal()).done()
    for c in (ours, rejected, plain):
        c.destroy()
