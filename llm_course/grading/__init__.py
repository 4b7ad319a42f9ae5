"""Graded exercises: the adapter that reaches the learner's code, and the grader."""

from llm_course.grading.adapter import NotCovered, exercise, load, require_written, resolve_impl
from llm_course.grading.grader import grade, progress

__all__ = ["NotCovered", "exercise", "load", "require_written", "resolve_impl", "grade", "progress"]
