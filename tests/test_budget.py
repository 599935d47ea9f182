"""--train_minutes: the schedules follow the measured step rate so that the loop ends on its budget."""
import pytest

from ssl_tf import checkpoints, config
from ssl_tf.errors import SSLTFError
from ssl_tf.runner import Runner
from ssl_tf.runner.loop import budget_total, resize_due


def test_budget_total_adds_the_steps_that_fit_in_the_time_left():
    assert budget_total(100, 2.0, 60.0, 120.0) == 220          # 60 s left at 2 steps/s
    assert budget_total(100, 2.0, 130.0, 120.0) == 101         # over budget: one more step ends it
    assert budget_total(0, 0.5, 0.0, 9.0) == 4


def test_after_half_the_budget_the_schedule_changes_only_to_avoid_missing_it_by_more_than_5_percent():
    # 1200 s at 2 steps/s: 5 % of the budget is 60 s = 120 steps
    assert resize_due(["start"], 2000, 2400, 2.0, 1200.0) and resize_due([0.5], 2390, 2400, 2.0, 1200.0)
    assert not resize_due([0.75], 2300, 2400, 2.0, 1200.0)       # 50 s early: within 5 %, the cosine stays
    assert resize_due([0.75], 2000, 2400, 2.0, 1200.0)           # 200 s early (a slowed first half): re-sized
    assert resize_due([0.75], 2800, 2400, 2.0, 1200.0)           # 200 s late


def test_a_time_budget_sizes_the_schedule_and_ends_on_time(tmp_path):
    budget = 0.25                                                # minutes
    run = Runner(config.Config(mode="pretrain", dataset="shapes:64,16", image_size=16, width=0.0625, batch_size=8,
                               epochs=1, train_minutes=budget, checkpoint_every=1000, progress=False, plots=False,
                               model_dir=str(tmp_path / "run")), log=lambda *a: None)
    summary = run.run()["pretrain"]
    assert summary["budget_minutes"] == budget
    assert summary["steps"] == summary["total_steps"] > 8        # 1 epoch is 8 steps: the budget decided, not it
    assert 0.6 * budget * 60 <= summary["loop_seconds"] <= 1.5 * budget * 60, summary["loop_seconds"]
    latest = checkpoints.latest(str(tmp_path / "run" / "pretrain"))
    assert checkpoints.metadata(latest)["total_steps"] == summary["total_steps"]
    again = Runner(config.Config(mode="pretrain", dataset="shapes:64,16", image_size=16, width=0.0625, batch_size=8,
                                 epochs=1, train_minutes=budget, progress=False, plots=False,
                                 model_dir=str(tmp_path / "run")), log=lambda *a: None).run()["pretrain"]
    assert again["steps"] == summary["steps"]                    # complete: resuming keeps the recorded length


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
def test_the_budget_must_be_a_finite_positive_number(value):
    with pytest.raises(SSLTFError, match="^--train_minutes="):
        config.resolve(config.Config(dataset="npz:x.npz", train_minutes=value), 32)
