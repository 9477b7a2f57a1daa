# The two commands of the README:
#   make demo   the main job: the simulated closed loop (sim + tiny policy + executor), on CPU
#   make test   set-up (if needed) + linters + the test suite + the real-controller tier
# Both run scripts/setup.sh first, which is idempotent (seconds on a ready machine).
SHELL := /bin/bash
ENV := source scripts/env.sh
PYTEST_ARGS ?=

.PHONY: setup demo test test-controllers test-slow lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) && python -m roboalign_ros.cli demo

lint: setup
	@$(ENV) && ruff check roboalign_ros test scripts launch setup.py \
	  && xmllint --noout package.xml config/fastdds.xml $$(ls urdf/*.xacro urdf/*.urdf 2>/dev/null)

test: lint
	@$(ENV) && python -m pytest -p no:cacheprovider $(PYTEST_ARGS)
	@bash scripts/test_controllers.sh

# the conformance suite against the real ros2_control (skipped, loudly, where none is found)
test-controllers: setup
	@bash scripts/test_controllers.sh

test-slow: setup
	@$(ENV) && python -m pytest -p no:cacheprovider -m slow $(PYTEST_ARGS)

clean:
	rm -rf build install log
