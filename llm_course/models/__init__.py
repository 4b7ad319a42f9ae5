"""The models, built from the layers in ``components`` (which call ``llm_course.ops``)."""
