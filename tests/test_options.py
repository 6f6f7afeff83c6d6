"""Spawner user_options validation (DESIGN: "Spawner user_options"): pure, no network."""

import json

import pytest

from hub_ext.layout import JobRef
from hub_ext.options import (
    DEFAULT_PROFILES,
    Context,
    GitSpec,
    OptionsError,
    Profile,
    ValidOptions,
    options_from_form,
    parse_bytes,
    requested_job_ids,
    validate_options,
)

GIB = 1024**3
PROFILES = [
    *DEFAULT_PROFILES,
    {"name": "gpu", "display_name": "GPU", "cpu": 8, "memory": "32G", "gpu": 1},
]
# job 4 is bob's, shared with alice
JOBS = {1: JobRef(1, "alice"), 2: JobRef(2, "alice"), 3: JobRef(3, "alice", "inference")}
JOBS[4] = JobRef(4, "bob", "inference")  # bob's, shared with alice


def make_ctx(**kw):
    base = dict(
        profiles={p["name"]: Profile.from_config(p) for p in PROFILES},
        all_datasets={"mnist", "qm9", "oc20", "md17", "ani1", "spice", "secret"},
        readable_datasets={"mnist", "qm9", "oc20", "md17", "ani1", "spice"},
        readable_jobs=JOBS,
        max_lifetime_hours=24,
    )
    base.update(kw)
    return Context(**base)


def refusal(raw, **kw):
    with pytest.raises(OptionsError) as info:
        validate_options(raw, make_ctx(**kw))
    return info.value.errors


def fields(raw, **kw):
    return [f for f, _ in refusal(raw, **kw)]


def test_empty_options_give_the_default_profile():
    opts = validate_options({}, make_ctx())
    assert opts.profile == "standard"
    assert opts.datasets == () and opts.parents == () and opts.git is None
    assert validate_options(None, make_ctx()).profile == "standard"


def test_default_profile_is_the_one_marked_default_not_the_first():
    profiles = {p["name"]: Profile.from_config(p) for p in reversed(PROFILES)}
    assert validate_options({}, make_ctx(profiles=profiles)).profile == "standard"


def test_valid_options_are_normalised():
    raw = {
        "profile": "gpu",
        "datasets": ["mnist", "qm9", "mnist"],
        "parent": [1, "2", 1],
        "inference": 3,
        "git": {"url": "https://example.org/team/repo.git", "ref": "v1.2"},
        "lifetime_hours": "2.5",
        "startup_command": "pip install -e .",
        "env": {"SEED": 42, "MODE": "fast"},
    }
    opts = validate_options(raw, make_ctx())
    assert opts.profile == "gpu"
    assert opts.datasets == ("mnist", "qm9")
    assert opts.parents == (JOBS[1], JOBS[2])
    assert opts.inferences == (JOBS[3],)
    assert opts.git == GitSpec("https://example.org/team/repo.git", "v1.2")
    assert opts.lifetime_hours == 2.5
    assert opts.startup_command == "pip install -e ."
    assert opts.env == {"SEED": "42", "MODE": "fast"}


def test_valid_options_round_trip_through_json():
    opts = validate_options(
        {"datasets": ["qm9"], "parent": 1, "inference": [3, 4], "git": {"url": "ssh://h/r"}},
        make_ctx(),
    )
    again = ValidOptions.from_dict(json.loads(json.dumps(opts.to_dict())))
    assert again == opts


def test_shared_inference_job_of_another_owner_keeps_its_owner():
    opts = validate_options({"inference": 4}, make_ctx())
    assert opts.inferences[0].owner == "bob"


def test_options_must_be_an_object():
    assert fields(["profile"]) == ["options"]


def test_unknown_key_is_named():
    errors = refusal({"gpus": 2})
    assert errors[0][0] == "gpus"
    assert "unknown option" in errors[0][1]


def test_unknown_profile():
    errors = refusal({"profile": "huge"})
    assert errors == [("profile", errors[0][1])]
    assert "huge" in errors[0][1]


BAD_NAMES = {"../etc": "not a dataset name", "a/b": "", "a..b": "", "": "", 7: ""}
BAD_DATASETS = {"nosuch": "unknown dataset", "secret": "not readable by your groups", **BAD_NAMES}


@pytest.mark.parametrize("name", BAD_DATASETS)
def test_dataset_refusals(name):
    words = BAD_DATASETS[name] or "not a dataset name"
    errors = refusal({"datasets": ["mnist", name]})
    assert errors == [("datasets", errors[0][1])]
    assert words in errors[0][1]


def test_more_datasets_than_the_maximum():
    six = ["mnist", "qm9", "oc20", "md17", "ani1", "spice"]
    errors = refusal({"datasets": six})
    assert errors == [("datasets", errors[0][1])]
    assert "6" in errors[0][1] and "5" in errors[0][1]
    assert validate_options({"datasets": six[:5]}, make_ctx()).datasets == tuple(six[:5])
    # the maximum is configurable, and duplicates do not count twice
    assert fields({"datasets": ["mnist", "qm9"]}, max_datasets=1) == ["datasets"]
    twice = validate_options({"datasets": ["qm9", "qm9"]}, make_ctx(max_datasets=1))
    assert twice.datasets == ("qm9",)


@pytest.mark.parametrize("field", ["parent", "inference"])
def test_jobs_not_readable_are_refused(field):
    errors = refusal({field: [3, 99]})
    assert errors == [(field, errors[0][1])]
    assert "99" in errors[0][1]


@pytest.mark.parametrize("value", ["abc", -1, 1.5, True, {"id": 1}])
def test_job_ids_must_be_integers(value):
    assert fields({"parent": value}) == ["parent"]


def test_inference_job_must_have_purpose_inference():
    errors = refusal({"inference": 1})
    assert errors[0][0] == "inference"
    assert "inference" in errors[0][1] and "training" in errors[0][1]
    # any readable job may be a parent
    assert validate_options({"parent": 3}, make_ctx()).parents == (JOBS[3],)


BAD_URLS = ["file:///etc", "ext::sh -c touch% /tmp/pwned", "-uhttps://example.org/r.git"]
BAD_URLS += ["--upload-pack=touch /tmp/x", "https://example.org/a b.git", "/srv/git/repo"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_git_url_disallowed(url):
    assert fields({"git": {"url": url}}) == ["git.url"]


def test_git_schemes_are_configurable():
    ctx = make_ctx(git_schemes=("https",))
    assert validate_options({"git": {"url": "https://h/r"}}, ctx).git.url == "https://h/r"
    assert fields({"git": {"url": "ssh://h/r"}}, git_schemes=("https",)) == ["git.url"]


@pytest.mark.parametrize("ref", ["-b", "--orphan", "a..b", "main branch", "x;rm", "~1", "main\n"])
def test_bad_git_ref(ref):
    assert fields({"git": {"url": "https://h/r.git", "ref": ref}}) == ["git.ref"]


@pytest.mark.parametrize("ref", ["main", "v1.0", "feature/x", "0123abcd"])
def test_good_git_ref(ref):
    opts = validate_options({"git": {"url": "https://h/r.git", "ref": ref}}, make_ctx())
    assert opts.git.ref == ref


def test_git_must_be_url_and_ref_only():
    assert fields({"git": "https://h/r.git"}) == ["git"]
    assert fields({"git": {"url": "https://h/r.git", "branch": "x"}}) == ["git"]


@pytest.mark.parametrize("value", ["abc", [1], -1, 0, "nan", True])
def test_lifetime_must_be_a_positive_number(value):
    errors = refusal({"lifetime_hours": value})
    assert [f for f, _ in errors] == ["lifetime_hours"]


def test_lifetime_over_the_maximum():
    errors = refusal({"lifetime_hours": 25})
    assert errors[0][0] == "lifetime_hours"
    assert "24" in errors[0][1]
    assert validate_options({"lifetime_hours": 24}, make_ctx()).lifetime_hours == 24
    # without a maximum, any positive number is taken
    assert validate_options({"lifetime_hours": 500}, make_ctx(max_lifetime_hours=None))


@pytest.mark.parametrize("value", ["inf", float("inf"), "-inf", "nan"])
def test_lifetime_must_be_finite_even_without_a_maximum(value):
    # 'nan' is refused; 'inf' must be too (it is not a number of hours, and is not valid JSON)
    assert fields({"lifetime_hours": value}, max_lifetime_hours=None) == ["lifetime_hours"]


@pytest.mark.parametrize(
    "key", ["KQI_ROOT", "KQI_DATASETS", "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "PATH", "HOME"]
)
def test_reserved_env_names(key):
    errors = refusal({"env": {key: "x"}})
    assert errors[0][0] == "env"
    assert key in errors[0][1]


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "A=B", "FOO\n"])
def test_invalid_env_names(key):
    assert fields({"env": {key: "x"}}) == ["env"]


@pytest.mark.parametrize(
    "key",
    [
        # read by the loader / glibc before any code of the user runs (outside the sandbox too)
        "LD_AUDIT",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "GCONV_PATH",
        "MALLOC_CHECK_",
        "LOCPATH",
        "TMPDIR",
        "RES_OPTIONS",
        # shells and runtimes
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASH_FUNC_ls%%",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "NODE_OPTIONS",
        "GIT_SSH_COMMAND",
        # not of the accepted shape (an allow rule, not a deny list)
        "ld_audit",
        "my_var",
        "X.Y",
    ],
)
def test_env_allows_only_ordinary_settings(key):
    errors = refusal({"env": {key: "x"}})
    assert [f for f, _ in errors] == ["env"]
    assert key in errors[0][1]


@pytest.mark.parametrize(
    "key", ["OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "SEED", "PYTHONUNBUFFERED", "https_proxy"]
)
def test_env_accepts_ordinary_settings(key):
    assert validate_options({"env": {key: "1"}}, make_ctx()).env == {key: "1"}


@pytest.mark.parametrize("value", [None, ["x"], True, "a\0b", "x" * 5000])
def test_invalid_env_values(value):
    assert fields({"env": {"FOO": value}}) == ["env"]


def test_startup_command_limits():
    assert fields({"startup_command": "x" * 5000}) == ["startup_command"]
    assert fields({"startup_command": "a\0b"}) == ["startup_command"]


def test_all_problems_are_reported_at_once():
    raw = {
        "colour": "blue",
        "profile": "huge",
        "datasets": ["secret"],
        "parent": 99,
        "inference": 1,
        "git": {"url": "file:///x"},
        "lifetime_hours": 100,
        "env": {"KQI_ROOT": "/"},
    }
    assert set(fields(raw)) == (raw.keys() - {"git"}) | {"git.url"}
    err = pytest.raises(OptionsError, validate_options, raw, make_ctx()).value
    assert isinstance(err, ValueError)
    assert "colour" in str(err) and "lifetime_hours" in str(err)


def test_odd_job_id_text_is_refused_naming_the_field():
    # '²'.isdigit() is True but int('²') fails: must be a refusal, not a crash
    assert fields({"parent": "²"}) == ["parent"]
    assert requested_job_ids({"parent": "²", "inference": 3}) == {3}


def test_requested_job_ids():
    assert requested_job_ids({"parent": [1, "2", "x"], "inference": 3}) == {1, 2, 3}
    assert requested_job_ids({}) == set()


# --- the spawn form ---------------------------------------------------------------------------


def test_options_from_form_turns_lists_into_the_rest_shape():
    form = {
        "profile": ["gpu"],
        "datasets": ["mnist", "qm9"],
        "parent": ["1"],
        "inference": [""],
        "git_url": [" https://h/r.git "],
        "git_ref": ["main"],
        "lifetime_hours": ["3"],
        "startup_command": ["make"],
        "env": ["SEED=1\n\n# comment\nMSG = a=b \n"],
    }
    opts = options_from_form(form)
    assert opts == {
        "profile": "gpu",
        "datasets": ["mnist", "qm9"],
        "parent": [1],
        "git": {"url": "https://h/r.git", "ref": "main"},
        "lifetime_hours": "3",
        "startup_command": "make",
        "env": {"SEED": "1", "MSG": "a=b"},
    }
    validated = validate_options(opts, make_ctx())
    assert validated.lifetime_hours == 3.0 and validated.parents == (JOBS[1],)


def test_empty_form_gives_empty_options():
    assert options_from_form({}) == {}
    blank = {"profile": [""], "parent": [""], "git_url": [""], "env": [""], "datasets": []}
    assert options_from_form(blank) == {}


def test_form_env_line_without_equals_names_the_line():
    with pytest.raises(ValueError, match=r"line 3.*NOPE"):
        options_from_form({"env": ["A=1\n\nNOPE\n"]})


# --- sizes and profiles ------------------------------------------------------------------------


SIZES = {"8G": 8 * GIB, "8Gi": 8 * GIB, "100GiB": 100 * GIB, "512M": 512 * 1024**2}
SIZES.update({"1.5g": int(1.5 * GIB), "1T": 1024**4, "2048": 2048, 4096: 4096})


@pytest.mark.parametrize("text, expected", SIZES.items())
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "8X", "G8"])
def test_parse_bytes_refuses_non_sizes(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_default_profile_matches_the_design():
    p = Profile.from_config(DEFAULT_PROFILES[0])
    assert (p.name, p.cpu, p.default) == ("standard", 2.0, True)
    assert (p.memory, p.storage) == (8 * GIB, 100 * GIB)


def test_profile_from_config_fills_defaults():
    p = Profile.from_config({"name": "small"})
    assert p.display_name == "small"
    assert (p.cpu, p.memory, p.storage, p.gpu, p.default) == (2.0, 8 * GIB, 100 * GIB, 0, False)
    assert Profile(**p.to_dict()) == p


@pytest.mark.parametrize(
    "data, words",
    [
        ({"name": "x", "cpus": 4}, "unknown keys"),
        ({"name": "bad name"}, "not a valid name"),
        ({"name": "../x"}, "not a valid name"),
        ({}, "not a valid name"),
    ],
)
def test_profile_from_config_refuses(data, words):
    with pytest.raises(ValueError, match=words):
        Profile.from_config(data)
