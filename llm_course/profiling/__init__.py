"""Profiling: which ops and kernels a piece of code spends its time in."""

from llm_course.profiling.profiler import ProfileResult, ProfileRow, profile_region

__all__ = ["ProfileResult", "ProfileRow", "profile_region"]
