#!/usr/bin/env python
# Copyright 2025 The trajfm authors. Licensed under the Apache License, Version 2.0.
"""Corpus preparation as a file to run: what spark-submit needs, since it runs Python files, not modules (``-m``).

    python run_prepare.py --data 'raw/*.csv.gz' --output_dir corpus          # = python -m tokenization_trajfm.prepare
    spark-submit --master spark://host:7077 run_prepare.py --engine spark --data /shared/raw --output_dir /shared/corpus

The work is `tokenization_trajfm.prepare` (steps, folder layout, every argument: ``--help``); the Spark engine's
requirements (shared filesystem, trajfm on every node) are in `tokenization_trajfm.spark`.
"""

from tokenization_trajfm.prepare import main

if __name__ == "__main__":
    main()
