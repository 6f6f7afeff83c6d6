"""The spawn form HTML (pure): what the user can choose, pre-filled from the last options."""

import re
from html.parser import HTMLParser

from hub_ext.options import DEFAULT_PROFILES, Profile, options_from_form
from hub_ext.spawner.form import render_form

GIB = 1024**3


def form_data(**kw):
    data = {
        "profiles": [
            Profile.from_config(DEFAULT_PROFILES[0]).to_dict(),
            Profile.from_config(
                {"name": "gpu", "display_name": "GPU box", "cpu": 8, "memory": "32G", "gpu": 1}
            ).to_dict(),
        ],
        "datasets": [
            {
                "name": "mnist",
                "description": "digits",
                "groups": None,
                "size": 11 * 2**20,
                "files": 4,
            },
            {"name": "qm9", "description": "", "groups": ["chem"], "size": 300, "files": 1},
        ],
        "jobs": [
            {"id": 5, "name": "train-a", "purpose": "training", "status": "succeeded"},
            {"id": 6, "name": "predict", "purpose": "inference", "status": "succeeded"},
        ],
        "max_datasets": 5,
        "max_lifetime_hours": 24,
        "git_schemes": ["https"],
    }
    data.update(kw)
    return data


class Inputs(HTMLParser):
    """Collect form controls as a browser would submit them."""

    def __init__(self, html):
        super().__init__()
        self.inputs, self.options, self.textareas = [], {}, {}
        self._select = self._textarea = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input":
            self.inputs.append(a)
        elif tag == "select":
            self._select = a["name"]
            self.options[self._select] = []
        elif tag == "option":
            self.options[self._select].append(a)
        elif tag == "textarea":
            self._textarea = a["name"]
            self.textareas[self._textarea] = ""

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.textareas[self._textarea] += data

    def named(self, name, type_=None):
        return [i for i in self.inputs if i.get("name") == name and type_ in (None, i.get("type"))]

    def submitted(self):
        """The form data a browser would post without the user changing anything."""
        out = {}
        for i in self.inputs:
            if i.get("type") in ("radio", "checkbox") and "checked" not in i:
                continue
            out.setdefault(i["name"], []).append(i.get("value", ""))
        for name, opts in self.options.items():
            sel = [o["value"] for o in opts if "selected" in o] or [opts[0]["value"]]
            out[name] = sel[:1]
        for name, text in self.textareas.items():
            out[name] = [text]
        return out


def test_each_profile_is_a_radio_and_the_default_is_checked():
    form = Inputs(render_form(form_data()))
    radios = {r["value"]: r for r in form.named("profile", "radio")}
    assert set(radios) == {"standard", "gpu"}
    assert "checked" in radios["standard"] and "checked" not in radios["gpu"]


def test_profile_lines_say_the_resources():
    html = render_form(form_data())
    assert "GPU box" in html
    assert "2 CPU, 8.0 GiB memory, 100.0 GiB workspace" in html
    assert "1 GPU" in html


def test_each_readable_dataset_is_a_checkbox_named_datasets():
    form = Inputs(render_form(form_data()))
    boxes = form.named("datasets", "checkbox")
    assert [b["value"] for b in boxes] == ["mnist", "qm9"]
    assert not any("checked" in b for b in boxes)


def test_no_datasets_says_so():
    html = render_form(form_data(datasets=[]))
    assert "No datasets" in html
    assert not Inputs(html).named("datasets")


def test_max_datasets_and_lifetime_are_shown():
    html = render_form(form_data(max_datasets=3))
    assert "at most 3" in html
    assert "at most 24 h" in html
    lifetime = Inputs(html).named("lifetime_hours")[0]
    assert lifetime["max"] == "24"
    assert (
        "max"
        not in Inputs(render_form(form_data(max_lifetime_hours=None))).named("lifetime_hours")[0]
    )


def test_inference_select_offers_only_inference_jobs():
    form = Inputs(render_form(form_data()))
    parent = [o["value"] for o in form.options["parent"]]
    inference = [o["value"] for o in form.options["inference"]]
    assert parent == ["", "5", "6"]
    assert inference == ["", "6"]


def test_previous_options_are_prefilled():
    previous = {
        "profile": "gpu",
        "datasets": ["qm9"],
        "parent": [5],
        "inference": 6,
        "git": {"url": "https://example.org/r.git", "ref": "dev"},
        "lifetime_hours": "3",
        "startup_command": "make setup",
        "env": {"SEED": "1", "MODE": "x"},
    }
    form = Inputs(render_form(form_data(), previous=previous))
    radios = {r["value"]: r for r in form.named("profile", "radio")}
    assert "checked" in radios["gpu"] and "checked" not in radios["standard"]
    boxes = {b["value"]: b for b in form.named("datasets")}
    assert "checked" in boxes["qm9"] and "checked" not in boxes["mnist"]
    assert [o["value"] for o in form.options["parent"] if "selected" in o] == ["5"]
    assert [o["value"] for o in form.options["inference"] if "selected" in o] == ["6"]
    assert form.named("git_url")[0]["value"] == "https://example.org/r.git"
    assert form.named("git_ref")[0]["value"] == "dev"
    assert form.named("lifetime_hours")[0]["value"] == "3"
    assert form.textareas["startup_command"] == "make setup"
    # submitting the pre-filled form unchanged gives back the same options
    assert options_from_form(form.submitted()) == {**previous, "parent": [5], "inference": [6]}


def test_unchanged_empty_form_submits_no_options_but_the_default_profile():
    form = Inputs(render_form(form_data()))
    assert options_from_form(form.submitted()) == {"profile": "standard"}


def test_limits_note_shown_only_when_given():
    note = "Memory and CPU limits are not enforced on this machine"
    assert note in render_form(form_data(), limits_note=note)
    assert "kqi-limits-note" not in render_form(form_data())
    assert "&lt;b&gt;" in render_form(form_data(), limits_note="<b>")


def test_names_and_descriptions_are_html_escaped():
    evil = "<script>alert(1)</script>"
    data = form_data(
        datasets=[{"name": "d1", "description": evil, "size": 1, "files": 1}],
        jobs=[{"id": 7, "name": evil, "purpose": "inference", "status": "<b>ok</b>"}],
        profiles=[{**form_data()["profiles"][0], "display_name": evil, "description": evil}],
    )
    html = render_form(data, previous={"git": {"url": '"><script>x</script>'}}, for_user=evil)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>ok</b>" not in html
    form = Inputs(html)
    assert form.named("git_url")[0]["value"] == '"><script>x</script>'


def test_attribute_values_cannot_break_out():
    data = form_data(datasets=[{"name": 'a"b', "description": "", "size": 1, "files": 1}])
    html = render_form(data)
    assert re.search(r'value="a&quot;b"', html)
    assert [b["value"] for b in Inputs(html).named("datasets")] == ['a"b']
