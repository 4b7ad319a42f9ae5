import sys

from llm_course.evaluation.cli import main

sys.exit(main())
