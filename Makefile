# Two commands do all set-up on a fresh machine (see README):
#   make demo   pre-train on the embedded synthetic city, then fine-tune and compare on the three tasks
#   make test   run the test suite
# Both create (or reuse) the project-local virtual environment .venv with the pinned CPU dependencies.

# torch's OpenMP threads spin at each barrier by default; beside another job on the same cores that spinning slows
# both several-fold; sleeping waits cost little alone (bench/bench_shared_cpu.py). Override: make nyc OMP_WAIT_POLICY=ACTIVE
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench nyc nyc-seeds nyc-seen nyc-seen-seeds geolife nyc-context geolife-context nyc-folds nyc-folds-seeds geolife-transfer

$(VENV)/.installed: requirements-cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-cpu.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The demo is rebuilt from scratch on every call (--overwrite_output_dir); the scripts refuse to overwrite otherwise.
demo: $(VENV)/.installed
	$(PY) run_mtm.py --overwrite_output_dir
	$(PY) run_finetune.py --compare --model_name_or_path trajfm-base --output_dir trajfm-compare --overwrite_output_dir

# NYC pre-training + compare end to end from ../shared/data (the README's NYC results); writes nyc-compare/.
nyc: $(VENV)/.installed
	$(PY) run_mtm.py configs/nyc_pretrain.yaml
	$(PY) run_finetune.py configs/nyc_compare.yaml

# After `make nyc`: the compare on two more splits of the held-out users (--data_seed), summarised with make nyc's
# split in nyc-seeds/seeds_report.{json,md}.
NYC_SEEDS ?= 43 44
nyc-seeds: $(VENV)/.installed
	for seed in $(NYC_SEEDS); do \
		$(PY) run_finetune.py configs/nyc_compare.yaml --data_seed $$seed --output_dir nyc-compare-seed$$seed || exit 1; \
	done
	$(PY) -m modeling_trajfm.downstream.seeds nyc-compare $(addprefix nyc-compare-seed,$(NYC_SEEDS)) --output_dir nyc-seeds

# Seen users, the paper's split (fine-tuning users seen in pre-training; their validation and test trajectories unseen):
# split files, pre-training on them, the compare. SEEN_SEED picks the users and trajectories (42: make nyc's users).
SEEN_SEED ?= 42
SEEN := nyc-seen-splits-$(SEEN_SEED)
nyc-seen: $(VENV)/.installed
	$(PY) -m modeling_trajfm.downstream.seen_users --data ../shared/data/foursquare_nyc_stan/nyc_stan_checkins.csv.gz \
		--reader stan_nyc --max_gap_minutes 4320 --seed $(SEEN_SEED) --output_dir $(SEEN) --overwrite_output_dir
	$(PY) run_mtm.py configs/nyc_seen_pretrain.yaml --train_file $(SEEN)/pretrain_train.parquet \
		--validation_file $(SEEN)/pretrain_validation.parquet --output_dir nyc-seen-base-$(SEEN_SEED)
	$(PY) run_finetune.py configs/nyc_compare.yaml --model_name_or_path nyc-seen-base-$(SEEN_SEED) \
		--train_file $(SEEN)/train.parquet --validation_file $(SEEN)/validation.parquet --test_file $(SEEN)/test.parquet \
		--output_dir nyc-seen-compare-$(SEEN_SEED)

# make nyc-seen for each of SEEN_SEEDS, summarised in nyc-seen-seeds/seeds_report.{json,md}.
SEEN_SEEDS ?= 42 43 44
nyc-seen-seeds: $(VENV)/.installed
	for seed in $(SEEN_SEEDS); do $(MAKE) nyc-seen SEEN_SEED=$$seed || exit 1; done
	$(PY) -m modeling_trajfm.downstream.seeds $(addprefix nyc-seen-compare-,$(SEEN_SEEDS)) --output_dir nyc-seen-seeds

# GeoLife GPS from ../shared/data, an out-of-sample check of the NYC recipe (nothing chosen on GeoLife): pre-training,
# then the compare on three splits of its held-out users, summarised in geolife-seeds/seeds_report.{json,md}.
GEOLIFE_SEEDS ?= 43 44
geolife: $(VENV)/.installed
	$(PY) run_mtm.py configs/geolife_pretrain.yaml
	$(PY) run_finetune.py configs/geolife_compare.yaml
	for seed in $(GEOLIFE_SEEDS); do \
		$(PY) run_finetune.py configs/geolife_compare.yaml --data_seed $$seed --output_dir geolife-compare-seed$$seed || exit 1; \
	done
	$(PY) -m modeling_trajfm.downstream.seeds geolife-compare $(addprefix geolife-compare-seed,$(GEOLIFE_SEEDS)) \
		--output_dir geolife-seeds

# After `make nyc`: the NYC checkpoint in another city, on GeoLife's held-out users (make geolife's 36) and the two
# user-association entries: continued on GeoLife's pre-training users first (configs/geolife_from_nyc_pretrain.yaml,
# into geolife-from-nyc/), then as it is. Compare reports in geolife-from-nyc-compare/ and nyc-in-geolife-compare/.
GEOLIFE_DATA = --data ../shared/data/geolife/geolife_60s.csv.gz --reader geolife --utc_offset_minutes 480 \
	--max_gap_minutes 1440
geolife-transfer: $(VENV)/.installed
	$(PY) run_mtm.py configs/geolife_from_nyc_pretrain.yaml
	$(PY) run_finetune.py configs/geolife_compare.yaml --model_name_or_path geolife-from-nyc \
		--tasks user_association --output_dir geolife-from-nyc-compare
	$(PY) run_finetune.py configs/geolife_compare.yaml --model_name_or_path nyc-base $(GEOLIFE_DATA) \
		--heldout_users geolife-from-nyc --tasks user_association --output_dir nyc-in-geolife-compare

# After `make nyc` or `make geolife`: destination with the user's context (the user's most recent earlier trajectory
# as segment A), compared with the baselines that see the user's history, on CONTEXT_SEEDS splits of the held-out users.
CONTEXT_SEEDS ?= 42 43 44
nyc-context geolife-context: $(VENV)/.installed
	for seed in $(CONTEXT_SEEDS); do \
		$(PY) run_finetune.py configs/$(@:-context=)_compare.yaml --tasks destination --destination_user_context true \
			--data_seed $$seed --output_dir $@-seed$$seed || exit 1; \
	done
	$(PY) -m modeling_trajfm.downstream.seeds $(addprefix $@-seed,$(CONTEXT_SEEDS)) --output_dir $@

# After `make nyc`: k-fold over the held-out users' trajectories, NYC_FOLDS runs whose test folds are disjoint and
# cover every trajectory, pooled into one compare report of all their test rows: nyc-folds/compare_report.{json,md,png}.
# FOLDS_SEED (--data_seed) deals the trajectories over the folds and draws the pairs; another seed writes
# nyc-fold<f>-seed<s>/ and nyc-folds-seed<s>/, a replicate of the same rows under another assignment.
NYC_FOLDS ?= 5
FOLDS_SEED ?= 42
FOLD_IDS = $(shell seq 0 $$(($(NYC_FOLDS) - 1)))
# the folders' suffix of a data seed: none for 42 (make nyc's split), -seed<s> otherwise
folds_suffix = $(if $(filter 42,$(1)),,-seed$(1))
FOLDS_SUFFIX = $(call folds_suffix,$(FOLDS_SEED))
nyc-folds: $(VENV)/.installed
	for fold in $(FOLD_IDS); do \
		$(PY) run_finetune.py configs/nyc_compare.yaml --num_folds $(NYC_FOLDS) --test_fold $$fold \
			--data_seed $(FOLDS_SEED) --output_dir nyc-fold$$fold$(FOLDS_SUFFIX) || exit 1; \
	done
	$(PY) -m modeling_trajfm.downstream.folds $(addsuffix $(FOLDS_SUFFIX),$(addprefix nyc-fold,$(FOLD_IDS))) \
		--output_dir nyc-folds$(FOLDS_SUFFIX)

# make nyc-folds for each of FOLDS_SEEDS, the pooled reports summarised across the assignments (mean, std, t interval)
# in nyc-folds-seeds/seeds_report.{json,md}.
FOLDS_SEEDS ?= 42 43 44
nyc-folds-seeds: $(VENV)/.installed
	for seed in $(FOLDS_SEEDS); do $(MAKE) nyc-folds FOLDS_SEED=$$seed || exit 1; done
	$(PY) -m modeling_trajfm.downstream.seeds \
		$(foreach seed,$(FOLDS_SEEDS),nyc-folds$(call folds_suffix,$(seed))) --output_dir nyc-folds-seeds

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) bench/bench_tokenizer.py
	$(PY) bench/bench_model.py
	$(PY) bench/bench_shared_cpu.py
