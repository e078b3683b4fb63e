# Injected with -DCMAKE_PROJECT_INCLUDE=... by scripts/build_interfaces.sh and scripts/colcon_build.sh
# (builds against the PyPI wheels; never needed with a ROS install).
#
# The PyPI ROS 2 wheels were built in a manylinux container, and their exported
# `<pkg>::<pkg>__rosidl_generator_py` targets name that container's Python and numpy include
# folders (/opt/python/cp3xx-cp3xx/...). CMake refuses imported targets whose include folders do
# not exist. Instead of editing the installed wheel files, we rewrite those entries on the
# imported targets, at the end of configuration, to this interpreter's folders
# (MIRAGE_PYTHON_INCLUDE and MIRAGE_NUMPY_INCLUDE, passed by the script).
function(_mirage_fix_wheel_includes)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _inc)
      continue()
    endif()
    set(_new "")
    set(_changed FALSE)
    foreach(_d IN LISTS _inc)
      if(_d MATCHES "^/opt/python/" AND NOT EXISTS "${_d}")
        set(_changed TRUE)
        if(_d MATCHES "numpy")
          list(APPEND _new "${MIRAGE_NUMPY_INCLUDE}")
        else()
          list(APPEND _new "${MIRAGE_PYTHON_INCLUDE}")
        endif()
      else()
        list(APPEND _new "${_d}")
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new)
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
    endif()
  endforeach()
endfunction()

if(MIRAGE_PYTHON_INCLUDE AND MIRAGE_NUMPY_INCLUDE)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _mirage_fix_wheel_includes)
endif()
