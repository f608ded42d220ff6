# mesh — developer targets. `make help` lists them.

SHELL := /bin/bash
LAB   := tests/lab/lab.sh

# Number of hosts in the test lab.
N ?= 5

.PHONY: help prereqs lab-image lab lab-down

help: ## List targets and their variables
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN { FS = ":.*## " } { printf "  %-12s %s\n", $$1, $$2 }'
	@echo "Variables:"
	@echo "  N=$(N)          number of lab hosts (lab)"

prereqs: ## Install/start what the lab needs (docker, debootstrap, ...)
	tests/lab/prereqs.sh

lab-image: prereqs ## Build the lab image mesh-lab:bookworm-1 (once)
	$(LAB) image

lab: prereqs ## Start lab hosts lab-1..lab-N (N=5) in slot 1; writes target/lab/lab/inventory.yml
	$(LAB) up --name lab --count $(N) --slot 1

lab-down: ## Remove the lab hosts started by `make lab`
	$(LAB) down --name lab
