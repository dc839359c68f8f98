"""The arguments of train_acula.py: a `transformers.TrainingArguments` with acula's defaults and aliases, and the
settings refused before any work (acula_train/arguments.py)."""

import pytest

import train_acula


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--spectrogram_dtype", "float16", "--spectrogram_dtype must be 'float32' or 'float64'"),
    ("--decode_workers", "-1", "--decode_workers must be >= 0"),
])
def test_bad_data_settings_are_refused_before_any_work(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        train_acula.parse_args([flag, value])
    assert message in capsys.readouterr().err


def test_training_arguments_are_transformers_training_arguments_with_acula_aliases():
    from transformers import TrainingArguments

    _, _, args = train_acula.parse_args(["--checkpointing_steps", "0", "--checkpoints_total_limit", "3"])
    assert isinstance(args, TrainingArguments)
    assert (args.save_steps, args.save_total_limit, args.checkpointing_steps) == (0, 3, 0)
    _, _, args = train_acula.parse_args(["--save_steps", "7", "--save_total_limit", "1"])
    assert (args.checkpointing_steps, args.save_total_limit) == (7, 1)
    _, _, args = train_acula.parse_args(["--save_strategy", "no"])
    assert args.checkpointing_steps == 0
    # acula's defaults; a fractional warm-up is a share of the run, at least one step; an explicit 0 is none
    _, _, args = train_acula.parse_args([])
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate) == (24, 2, 1e-4)
    assert (args.save_steps, args.save_total_limit, args.logging_steps, args.max_steps) == (50, 2, 5, -1)
    assert [args.get_warmup_steps(n) for n in (4, 50, 100)] == [1, 2, 5]
    _, _, args = train_acula.parse_args(["--warmup_steps", "0"])
    assert args.get_warmup_steps(100) == 0
    assert args.num_train_epochs == 4 and args.to_dict()["hub_token"] == "<HUB_TOKEN>"  # the demo pack's epochs


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr_scheduler_type", "cosine"], "--lr_scheduler_type cosine: train_acula.py runs its own alignment loop"),
    (["--eval_strategy", "steps", "--eval_steps", "5"], "--eval_strategy steps"),
    (["--save_steps", "0.5"], "--save_steps must be a whole number"),
    (["--on_nonfinite_loss", "ignore"], "--on_nonfinite_loss must be 'stop' or 'skip'"),
    (["--report_fields", "findings", "age_years"], "--report_fields: 'age_years' is not a report field"),
    (["--report_fields", "findings", "--report_column", "report"], "--report_column brings written ones"),
    (["--report_fields", "findings", "--supervised_label_column", "murmur_at_site"],
     "--report_column, --report_fields, --rewrite_model and --lowercase_reports do not apply"),
])
def test_training_settings_the_loop_does_not_have_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        train_acula.parse_args(flags)
    assert message in capsys.readouterr().err
