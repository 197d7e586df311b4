# The two commands README.md names.
.PHONY: run test

run:
	ci/run-demo.sh

test:
	ci/test.sh
