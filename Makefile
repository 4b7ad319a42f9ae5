# The course in two commands:
#   make lab    set up (first time only) and open the notebooks in JupyterLab
#   make test   set up (first time only), then run the tests and every notebook, with
#               the solutions and with the untouched exercise stubs
#
# Set-up: a virtual environment in .venv, the project installed editable with the
# exact versions pinned in requirements.txt. Use PYTHON=python3.12 (say) to pick
# the interpreter (3.10 or newer).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llm-course-installed
JOBS   ?= 2
NBVAL  := $(BIN)/python -m pytest notebooks --nbval --nbval-current-env -p no:xdist \
          --nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout=600

.PHONY: lab test test-unit test-notebooks grade setup doctor clean

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

test: $(STAMP)
	$(MAKE) --no-print-directory test-unit
	$(MAKE) --no-print-directory test-notebooks

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -n $(JOBS)

# Every notebook, top to bottom on the CPU: once with the solutions (outputs compared
# with the stored ones) and once with the untouched stubs (the notebooks fall back to
# the course's reference code; grader rows are expected to differ).
test-notebooks: $(STAMP)
	LLM_COURSE_IMPL=solutions $(NBVAL)
	cat notebooks/nbval_sanitize.cfg notebooks/nbval_sanitize_stubs.cfg > $(VENV)/nbval_sanitize_stubs.cfg
	LLM_COURSE_IMPL=exercises $(NBVAL) --nbval-sanitize-with $(VENV)/nbval_sanitize_stubs.cfg

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
