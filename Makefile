# The course in two commands:
#   make lab    set up (first time only) and open JupyterLab at the repository root, on the
#               first notebook (notebooks/, exercises/ and results/ are all reachable from it)
#   make test   set up (first time only), then run the tests and every notebook, with
#               the untouched exercise stubs and with the solutions
# For the course's maintainers:
#   make notebooks   re-execute every notebook with the untouched stubs and store its outputs
#
# Set-up: a virtual environment in .venv, the project installed editable with the
# exact versions pinned in requirements.txt. Use PYTHON=python3.12 (say) to pick
# the interpreter (3.10 or newer).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llm-course-installed
JOBS   ?= 2
FIRST_NOTEBOOK := notebooks/00a_text_to_tokens.ipynb
SANITIZE := tests/notebooks
NBVAL  := TQDM_DISABLE=1 $(BIN)/python -m pytest notebooks --nbval --nbval-current-env -p no:xdist \
          --nbval-cell-timeout=600

.PHONY: lab test test-unit test-notebooks notebooks exercises grade setup doctor clean

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=. $(FIRST_NOTEBOOK) $(if $(filter 0,$(shell id -u)),--allow-root)

test: $(STAMP)
	$(MAKE) --no-print-directory test-unit
	$(MAKE) --no-print-directory test-notebooks

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -n $(JOBS)

# Every notebook, top to bottom on the CPU. The stored outputs are those of the untouched
# stubs (make notebooks): the run with exercises/ must reproduce them, up to timings and
# addresses (sanitize.cfg). The run with solutions/ must give the same outputs except
# which implementation each exercise cell used and the grader's verdicts
# (sanitize_solutions.cfg, added to sanitize.cfg).
test-notebooks: $(STAMP)
	LLM_COURSE_IMPL=exercises $(NBVAL) --nbval-sanitize-with $(SANITIZE)/sanitize.cfg
	cat $(SANITIZE)/sanitize.cfg $(SANITIZE)/sanitize_solutions.cfg > $(VENV)/nbval_sanitize_solutions.cfg
	LLM_COURSE_IMPL=solutions $(NBVAL) --nbval-sanitize-with $(VENV)/nbval_sanitize_solutions.cfg

# Re-execute every notebook with the untouched stubs and store the outputs (for the
# course's maintainers, after changing a notebook or what it prints). NOTEBOOKS=... picks some.
notebooks: $(STAMP)
	$(BIN)/python tests/notebooks/execute.py $(NOTEBOOKS)

# Make the exercise stubs in exercises/ from solutions/ (each solution marks the learner's part
# with BEGIN/END EXERCISE; tests/test_exercise_sources.py fails when the two disagree).
exercises: $(STAMP)
	$(BIN)/python -m llm_course.grading.exercise_source --write

grade: $(STAMP)
	$(BIN)/llm-course grade

doctor: $(STAMP)
	$(BIN)/llm-course doctor

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (try PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.txt -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (llm_course)" >/dev/null
	@touch $(STAMP)
	@echo "Set-up done: $(VENV) holds the course's environment."

clean:
	rm -rf $(VENV) .pytest_cache
