"""Job spec validation (DESIGN: "kqi service REST API", job spec fields; issue 3 continue):
pure functions, the same authority context as the spawn options."""

import pytest

from hub_ext.jobspec import JobSpec, continue_spec, validate_job_spec
from hub_ext.layout import JobRef
from hub_ext.options import DEFAULT_PROFILES, Context, OptionsError, Profile

MAX = 3600
PROFILES = [*DEFAULT_PROFILES, {"name": "gpu", "cpu": 8, "memory": "32G", "gpu": 1}]
JOBS = {1: JobRef(1, "alice"), 2: JobRef(2, "alice", "inference"), 5: JobRef(5, "bob")}


def make_ctx(**kw):
    base = dict(
        profiles={p["name"]: Profile.from_config(p) for p in PROFILES},
        all_datasets={"mnist", "qm9", "oc20", "secret"},
        readable_datasets={"mnist", "qm9", "oc20"},
        readable_jobs=JOBS,
    )
    base.update(kw)
    return Context(**base)


def valid(raw, max_timeout=MAX, **kw):
    return validate_job_spec(raw, make_ctx(**kw), max_timeout)


def refusal(raw, max_timeout=MAX, **kw):
    with pytest.raises(OptionsError) as info:
        validate_job_spec(raw, make_ctx(**kw), max_timeout)
    return info.value.errors


def fields(raw, **kw):
    return sorted({f for f, _ in refusal(raw, **kw)})


def test_a_full_spec_is_normalised():
    spec = valid(
        {
            "name": "relax",
            "command": "python train.py --epochs 3",
            "profile": "gpu",
            "datasets": ["qm9", "mnist", "qm9"],
            "parent": [1, "5"],
            "purpose": "inference",
            "env": {"SEED": 42},
            "timeout_seconds": "600",
            "notify_url": "https://hooks.example.org/kqi?x=1",
        }
    )
    assert spec == JobSpec(
        name="relax",
        command="python train.py --epochs 3",
        profile="gpu",
        datasets=("qm9", "mnist"),
        parents=(JOBS[1], JOBS[5]),
        purpose="inference",
        env={"SEED": "42"},
        timeout_seconds=600,
        notify_url="https://hooks.example.org/kqi?x=1",
    )


def test_only_a_command_gives_the_defaults():
    spec = valid({"command": "python run.py"})
    assert spec.profile == "standard" and spec.purpose == "training"
    assert spec.datasets == () and spec.parents == () and spec.env == {}
    assert spec.notify_url == "" and spec.timeout_seconds == MAX


@pytest.mark.parametrize("raw", [{}, {"command": ""}, {"command": "  \n\t "}, {"command": None}])
def test_command_is_required(raw):
    errors = refusal(raw)
    assert [f for f, _ in errors] == ["command"]
    assert "required" in errors[0][1]


@pytest.mark.parametrize("command", [42, ["python", "x.py"], "a\0b", "x" * 16385])
def test_command_must_be_text(command):
    assert fields({"command": command}) == ["command"]


@pytest.mark.parametrize("raw", [None, [], "python x.py", 3])
def test_spec_must_be_an_object(raw):
    assert fields(raw) == ["spec"]


def test_unknown_key_is_refused_naming_it():
    errors = refusal({"command": "x", "gpus": 2, "copy_output": True})
    assert sorted(f for f, _ in errors) == ["copy_output", "gpus"]
    assert all("unknown" in m for _, m in errors)


@pytest.mark.parametrize("purpose", ["training", "inference"])
def test_purpose_values(purpose):
    assert valid({"command": "x", "purpose": purpose}).purpose == purpose


@pytest.mark.parametrize("purpose", ["Training", "eval", 1, ["inference"]])
def test_purpose_must_be_training_or_inference(purpose):
    errors = refusal({"command": "x", "purpose": purpose})
    assert [f for f, _ in errors] == ["purpose"]
    assert "training" in errors[0][1] and "inference" in errors[0][1]


def test_name_defaults_to_the_first_line_of_the_command():
    assert valid({"command": "  python a.py\npython b.py\n"}).name == "python a.py"
    assert valid({"command": "echo " + "y" * 200}).name == ("echo " + "y" * 200)[:80]
    assert len(valid({"command": "z" * 500}).name) == 80
    assert valid({"command": "x", "name": ""}).name == "x"
    assert valid({"command": "x", "name": None}).name == "x"
    assert valid({"command": "x", "name": "mine"}).name == "mine"


@pytest.mark.parametrize("name", [7, "n" * 256, "a\0b"])
def test_name_must_be_short_text(name):
    assert fields({"command": "x", "name": name}) == ["name"]


@pytest.mark.parametrize(
    "value, words",
    [
        ("secret", "not readable"),
        ("nosuch", "unknown dataset"),
        ("../etc", "not a dataset name"),
        (7, "not a dataset name"),
    ],
)
def test_datasets_use_the_spawn_checks(value, words):
    errors = refusal({"command": "x", "datasets": ["mnist", value]})
    assert [f for f, _ in errors] == ["datasets"]
    assert words in errors[0][1]


def test_more_datasets_than_the_maximum():
    assert fields({"command": "x", "datasets": ["mnist", "qm9"]}, max_datasets=1) == ["datasets"]


@pytest.mark.parametrize("parent, words", [(99, "no job 99"), ("abc", "not a job id"), (0, "")])
def test_parent_must_be_a_job_the_user_may_read(parent, words):
    errors = refusal({"command": "x", "parent": parent})
    assert [f for f, _ in errors] == ["parent"]
    assert words in errors[0][1]


def test_a_shared_job_of_another_owner_can_be_a_parent():
    assert valid({"command": "x", "parent": 5}).parents == (JobRef(5, "bob"),)
    assert fields({"command": "x", "parent": 5}, readable_jobs={1: JOBS[1]}) == ["parent"]


def test_profile_must_be_known():
    errors = refusal({"command": "x", "profile": "huge"})
    assert errors[0][0] == "profile" and "huge" in errors[0][1]


@pytest.mark.parametrize(
    "env", [{"KQI_ROOT": "/"}, {"PATH": "/tmp"}, {"1BAD": "x"}, {"OK": None}, ["A=1"]]
)
def test_env_uses_the_spawn_checks(env):
    assert fields({"command": "x", "env": env}) == ["env"]


@pytest.mark.parametrize("value, expected", [(1, 1), (60, 60), ("120", 120), (MAX, MAX)])
def test_timeout_within_the_maximum(value, expected):
    assert valid({"command": "x", "timeout_seconds": value}).timeout_seconds == expected


@pytest.mark.parametrize("value", [0, -5, 0.5, "soon", True, float("inf"), float("nan"), [60]])
def test_timeout_must_be_a_positive_number(value):
    assert fields({"command": "x", "timeout_seconds": value}) == ["timeout_seconds"]


def test_timeout_over_the_maximum_is_refused():
    errors = refusal({"command": "x", "timeout_seconds": MAX + 1})
    assert [f for f, _ in errors] == ["timeout_seconds"]
    assert str(MAX) in errors[0][1]


def test_a_huge_integer_timeout_is_refused_not_a_crash():
    # valid JSON (an integer too large for a float) must be a field error, not an exception
    assert fields({"command": "x", "timeout_seconds": 10**400}) == ["timeout_seconds"]


def test_no_timeout_means_the_maximum():
    assert valid({"command": "x", "timeout_seconds": None}).timeout_seconds == MAX
    assert valid({"command": "x", "timeout_seconds": ""}).timeout_seconds == MAX
    assert valid({"command": "x"}, max_timeout=None).timeout_seconds is None
    assert valid({"command": "x", "timeout_seconds": 10**6}, max_timeout=None).timeout_seconds


@pytest.mark.parametrize(
    "url", ["http://hooks.local/x", "https://h.example.org:8443/a?b=c", "http://10.0.0.1/"]
)
def test_notify_url_http_or_https(url):
    assert valid({"command": "x", "notify_url": url}).notify_url == url


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "file:///etc/passwd", "https://", "hooks.example.org", "/x", 5]
)
def test_notify_url_must_be_http_with_a_host(url):
    assert fields({"command": "x", "notify_url": url}) == ["notify_url"]


def test_a_malformed_notify_url_is_a_field_error_not_a_crash():
    assert fields({"command": "x", "notify_url": "http://[oops/"}) == ["notify_url"]


def test_every_problem_is_reported_at_once():
    raw = {
        "command": " ",
        "purpose": "eval",
        "profile": "huge",
        "datasets": ["secret"],
        "parent": 99,
        "env": {"HOME": "/"},
        "timeout_seconds": MAX * 2,
        "notify_url": "ftp://x",
        "extra": 1,
    }
    assert fields(raw) == sorted(
        ["command", "purpose", "profile", "datasets", "parent", "env", "timeout_seconds"]
        + ["notify_url", "extra"]
    )


# continue


PREVIOUS = JobSpec(
    name="train",
    command="python train.py",
    profile="gpu",
    datasets=("qm9", "mnist"),
    parents=(JOBS[1],),
    purpose="inference",
    env={"SEED": "1"},
    timeout_seconds=1200,
    notify_url="https://hooks.example.org/a",
)
PREV_REF = JobRef(7, "alice", "inference")


def cont(raw, previous=PREVIOUS, max_timeout=MAX, **kw):
    return continue_spec(raw, previous, PREV_REF, make_ctx(**kw), max_timeout)


def cont_fields(raw, **kw):
    with pytest.raises(OptionsError) as info:
        cont(raw, **kw)
    return sorted({f for f, _ in info.value.errors})


def test_continue_keeps_the_previous_job_and_has_it_as_only_parent():
    spec = cont({})
    assert spec.parents == (PREV_REF,)
    assert (spec.command, spec.profile, spec.purpose) == ("python train.py", "gpu", "inference")
    assert spec.datasets == ("qm9", "mnist")
    assert spec.env == {"SEED": "1"} and spec.name == "train"
    assert spec.timeout_seconds == 1200 and spec.notify_url == "https://hooks.example.org/a"
    assert cont({"copy_output": True}) == spec


def test_continue_with_a_new_command_keeps_the_rest():
    spec = cont({"command": "python finetune.py", "env": {"LR": "0.1"}, "timeout_seconds": 60})
    assert spec.command == "python finetune.py"
    assert spec.datasets == PREVIOUS.datasets and spec.profile == "gpu"
    assert spec.env == {"LR": "0.1"} and spec.timeout_seconds == 60
    assert spec.parents == (PREV_REF,)


def test_continue_does_not_change_the_previous_spec():
    before = JobSpec(**{f: getattr(PREVIOUS, f) for f in PREVIOUS.__dataclass_fields__})
    cont({"command": "other", "env": {"X": "1"}})
    assert PREVIOUS == before


@pytest.mark.parametrize("value", ["yes", 1, None, "true"])
def test_copy_output_must_be_a_bool(value):
    assert cont_fields({"copy_output": value}) == ["copy_output"]


@pytest.mark.parametrize("key", ["datasets", "profile", "parent", "purpose", "gpus"])
def test_continue_refuses_unknown_keys(key):
    assert cont_fields({key: "x"}) == [key]


def test_continue_body_must_be_an_object():
    assert cont_fields([]) == ["body"]


def test_continue_refused_when_a_dataset_is_no_longer_readable():
    with pytest.raises(OptionsError) as info:
        cont({}, readable_datasets={"mnist"})
    assert [f for f, _ in info.value.errors] == ["datasets"]
    assert "qm9" in info.value.errors[0][1]


def test_continue_checks_the_given_fields():
    assert cont_fields({"command": "  "}) == ["command"]
    assert cont_fields({"timeout_seconds": MAX + 1}) == ["timeout_seconds"]
    assert cont_fields({"notify_url": "ftp://x"}) == ["notify_url"]
    assert cont_fields({"env": {"KQI_ROOT": "/"}}) == ["env"]


def test_continue_refused_when_the_profile_is_gone():
    gone = {p["name"]: Profile.from_config(p) for p in DEFAULT_PROFILES}
    assert cont_fields({}, profiles=gone) == ["profile"]


def test_continue_of_a_continue_has_only_the_last_as_parent():
    first = cont({"command": "python step2.py"})
    second = continue_spec({}, first, JobRef(8, "alice"), make_ctx(), MAX)
    assert second.parents == (JobRef(8, "alice"),)
    assert second.command == "python step2.py" and second.datasets == PREVIOUS.datasets
