#!/usr/bin/env python
"""Run an alignment recipe study from one study file: train every recipe x seed (resumably), measure each run's
held-out alignment loss and its movement from the frozen start, evaluate every run beside the baselines once, and
write results/<study>/study.md and study.json.

    python scripts/recipe_study.py examples/recipe_study_circor.json --dry_run    # the commands, nothing run
    python scripts/recipe_study.py examples/recipe_study_circor.json              # run (re-run to continue)
    python scripts/recipe_study.py examples/recipe_study_circor.json --recipes default infonce
    python scripts/recipe_study.py examples/recipe_study_circor.json --tables_only  # the tables from the records

The study file's layout and what each step does: `acula_eval/recipe_study.py`.
"""

import argparse
import sys

import modeling_acula  # noqa: F401  (registers the Auto classes)
from acula_eval.recipe_study import RecipeStudy, Study


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_file", help="the study file (JSON)")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--recipes", nargs="+", default=None, help="train and measure only these recipes")
    parser.add_argument("--skip_eval", "--skip-eval", action="store_true",
                        help="no eval_acula.py run: the tables keep the AUROCs of the last evaluation, if any")
    parser.add_argument("--tables_only", "--tables-only", action="store_true",
                        help="train, measure and evaluate nothing: rewrite study.md and study.json from the runs' "
                             "records and the evaluations there are")
    args = parser.parse_args(argv)
    try:
        study = RecipeStudy(Study.from_file(args.study_file), recipes=args.recipes)
        return study.run(dry_run=args.dry_run, evaluate=not args.skip_eval,
                         tables_only=args.tables_only)
    except (ValueError, RuntimeError) as error:
        if argv is not None:
            raise
        print(f"recipe_study.py: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
