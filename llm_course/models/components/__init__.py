"""Building blocks of the models: layers that call ``llm_course.ops``."""

from llm_course.models.components.linear import Linear
