"""The /kqi layout plan (DESIGN: "The /kqi layout"): pure, no file system."""

import json

from hub_ext.layout import Binding, JobRef, LayoutPlan, parent_dirs, plan_job, plan_notebook

P1 = JobRef(11, "alice", "training")
P2 = JobRef(12, "bob", "training")
INF1 = JobRef(21, "alice", "inference")
INF2 = JobRef(22, "alice", "inference")


def targets(plan):
    return [b.target for b in plan.bindings]


def test_datasets_are_read_only_at_input_name():
    plan = plan_notebook("alice", datasets=["mnist", "qm9"])
    for name in ("mnist", "qm9"):
        b = plan.binding(f"input/{name}")
        assert b == Binding(f"input/{name}", f"datasets/{name}", True, "dataset")


def test_one_parent_is_mounted_at_parent_itself():
    plan = plan_notebook("alice", parents=[P1])
    b = plan.binding("parent")
    assert b is not None
    assert b.source == "users/alice/jobs/11/output"
    assert b.read_only
    assert not any(t.startswith("parent/") for t in targets(plan))


def test_several_parents_are_mounted_at_parent_id():
    plan = plan_notebook("alice", parents=[P1, P2])
    assert plan.binding("parent") is None
    b1, b2 = plan.binding("parent/11"), plan.binding("parent/12")
    assert b1.source == "users/alice/jobs/11/output"
    # a parent owned by someone else is read from its owner's folder
    assert b2.source == "users/bob/jobs/12/output"
    assert b1.read_only and b2.read_only


def test_inference_follows_the_same_rule():
    one = plan_notebook("alice", inferences=[INF1])
    assert one.binding("inference").source == "users/alice/jobs/21/output"
    assert one.binding("inference").read_only
    several = plan_notebook("alice", inferences=[INF1, INF2])
    assert several.binding("inference") is None
    assert several.binding("inference/21").read_only
    assert several.binding("inference/22").source == "users/alice/jobs/22/output"


def test_notebook_jobs_folder_is_the_users_own_read_only():
    plan = plan_notebook("alice")
    b = plan.binding("jobs")
    assert b.source == "users/alice/jobs"
    assert b.read_only
    # a notebook has no code/output of its own
    assert plan.binding("code") is None and plan.binding("output") is None


def test_git_is_a_fresh_writable_folder_only_when_asked():
    assert plan_notebook("alice").binding("git") is None
    b = plan_notebook("alice", git=True).binding("git")
    assert b.source is None
    assert not b.read_only


def test_home_links_only_for_present_paths_in_order():
    assert plan_notebook("alice").home_links == ("jobs",)
    full = plan_notebook("alice", datasets=["d"], parents=[P1, P2], inferences=[INF1], git=True)
    assert full.home_links == ("input", "parent", "inference", "git", "jobs")
    some = plan_notebook("alice", inferences=[INF1], git=True)
    assert some.home_links == ("inference", "git", "jobs")


def test_notebook_env():
    plan = plan_notebook("alice", datasets=["mnist", "qm9"], parents=[P1, P2], inferences=[INF1])
    assert plan.env["KQI_DATASETS"] == "mnist,qm9"
    assert plan.env["KQI_PARENT_ID"] == "11,12"
    assert plan.env["KQI_INFERENCE_ID"] == "21"


def test_notebook_env_empty_when_nothing_chosen():
    env = plan_notebook("alice").env
    assert env["KQI_DATASETS"] == ""
    assert env["KQI_PARENT_ID"] == ""
    assert env["KQI_INFERENCE_ID"] == ""


def test_job_gets_writable_code_and_output_of_its_own():
    plan = plan_job("alice", 7, datasets=["mnist"], parents=[P1])
    code, output = plan.binding("code"), plan.binding("output")
    assert code.source == "users/alice/jobs/7/code" and not code.read_only
    assert output.source == "users/alice/jobs/7/output" and not output.read_only
    assert plan.binding("input/mnist").read_only
    assert plan.binding("parent").read_only
    # jobs see neither the user's job folders nor a git scratch folder, and make no home links
    assert plan.binding("jobs") is None and plan.binding("git") is None
    assert plan.home_links == ()


def test_job_env():
    plan = plan_job("alice", 7, datasets=["a", "b"], parents=[P1], inferences=[INF1, INF2])
    assert plan.env["KQI_JOB_ID"] == "7"
    assert plan.env["PYTHONUNBUFFERED"] == "1"
    assert plan.env["KQI_DATASETS"] == "a,b"
    assert plan.env["KQI_PARENT_ID"] == "11"
    assert plan.env["KQI_INFERENCE_ID"] == "21,22"
    assert plan.env["KQI_CONTINUED_FROM"] == ""
    assert plan_job("alice", 8, continued_from=7).env["KQI_CONTINUED_FROM"] == "7"


def test_job_several_parents_at_parent_id():
    plan = plan_job("alice", 7, parents=[P1, P2])
    assert {"parent/11", "parent/12"} <= set(targets(plan))
    assert plan.binding("parent") is None


def test_env_never_carries_tokens():
    plan = plan_job("alice", 7, datasets=["a"], parents=[P1])
    assert not any("TOKEN" in k for k in plan.env)


def test_parent_dirs_before_nested_targets():
    plan = plan_notebook("alice", datasets=["a", "b"], parents=[P1, P2], git=True)
    dirs = parent_dirs(plan)
    assert dirs == ["input", "parent"]  # each once, top-level targets need none


def test_parent_dirs_empty_for_flat_plan():
    assert parent_dirs(plan_notebook("alice", parents=[P1], git=True)) == []


def test_parent_dirs_lists_every_level_shallow_first():
    plan = LayoutPlan((Binding("a/b/c", "x", True, "r"), Binding("a/d", "y", True, "r")))
    assert parent_dirs(plan) == ["a", "a/b"]


def test_plan_round_trips_through_json():
    for plan in (
        plan_notebook("alice", datasets=["d"], parents=[P1, P2], inferences=[INF1], git=True),
        plan_job("alice", 7, datasets=["d"], parents=[P1], continued_from=3),
        LayoutPlan(()),
    ):
        again = LayoutPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert again == plan
        assert again.to_dict() == plan.to_dict()


def test_from_dict_tolerates_missing_keys():
    assert LayoutPlan.from_dict({}) == LayoutPlan((), (), {})
