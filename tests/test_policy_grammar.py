"""One policy grammar (issue 24, item 2): the same text chooses the same policy in Router.route,
on the command line, over HTTP (model="router:TEXT") and in the app, plug-in policies included."""

import json

import httpx
import pytest

from t2iroute import registry
from t2iroute.cli import main
from t2iroute.router.policy import LambdaPolicy, parse_policy, policy_from_keywords


class Thrifty(LambdaPolicy):
    """A plug-in policy: lambda * factor, so a large factor routes to the cheapest backend."""

    type_name = "thrifty"

    def __init__(self, factor: float = 1.0):
        super().__init__(lam=1000.0 * float(factor))
        self.factor = float(factor)

    def params(self):
        return {"factor": self.factor}


@pytest.fixture
def thrifty():
    registry.register("policies", "thrifty", Thrifty)
    yield
    registry._EXTRA["policies"].pop("thrifty")


@pytest.mark.parametrize(
    "text, kw",
    [
        ("lam=0.05", {"lam": 0.05}),
        (" budget = 0.3 ", {"budget": 0.3}),
        ("quality_floor=-2", {"quality_floor": -2.0}),
        ("max_cost=1.5", {"max_cost": 1.5}),
        ("policy={type: fixed, backend: mid}", {"policy": {"type": "fixed", "backend": "mid"}}),
    ],
)
def test_the_text_form_parses_to_one_keyword(text, kw):
    assert parse_policy(text) == kw


@pytest.mark.parametrize(
    "text, words",
    [
        ("lam", "use lam=X"),
        ("speed=1", "use lam=X"),
        ("lam=fast", "lam needs a number"),
        ("policy=[1, 2]", "mapping with a type"),
        ("policy={lam: 1}", "mapping with a type"),
        ("policy={type: [", "not a YAML mapping"),
        ("policy=!!python/object/apply:os.system [echo hi]", "not a YAML mapping"),  # data only, never code
        ("lam=" + "1" * 3000, "longer than 2000"),
    ],
)
def test_bad_text_is_refused_naming_it(text, words):
    with pytest.raises(ValueError, match=words) as e:
        parse_policy(text)
    assert "policy '" in str(e.value)


def test_policy_text_builds_the_same_policy_as_the_keywords_and_counts_as_one():
    assert policy_from_keywords(policy="budget=0.3").describe() == policy_from_keywords(budget=0.3).describe()
    assert policy_from_keywords(policy="policy={type: lam, lam: 2}").describe() == {"type": "lam", "lam": 2.0}
    with pytest.raises(ValueError, match="at most one"):
        policy_from_keywords(lam=0.1, policy="budget=0.3")
    with pytest.raises(ValueError, match="finite number >= 0"):
        policy_from_keywords(policy="lam=-1")


def test_router_route_and_generate_take_the_text(tiny_artifact, thrifty):
    from t2iroute import Router

    r = Router.load(tiny_artifact)
    p = "two birds on a wire"
    assert r.route(p).backend == "slow"
    for text, backend in [
        ("lam=1000", "fast"),
        ("max_cost=0.6", "mid"),
        ("policy={type: fixed, backend: mid}", "mid"),
        ("policy={type: thrifty, factor: 1}", "fast"),
    ]:
        d = r.route(p, policy=text)
        assert d.backend == backend, (text, d.policy)
    assert r.route(p, policy="policy={type: thrifty, factor: 2}").policy == {"type": "thrifty", "factor": 2.0}
    res = r.generate(p, policy="max_cost=0.6", seed=0)
    assert res.decision.backend == "mid" and res.backend == "mid"
    own = Router(r.featurizer, r.predictor, r.backend_names, r.costs, policy="lam=1000")  # a default as text
    assert own.policy.describe() == {"type": "lam", "lam": 1000.0} and own.route(p).backend == "fast"


@pytest.mark.parametrize("args", [['policy="max_cost=0.6"'], ["max_cost=0.6"], ["policy={type: fixed, backend: mid}"]])
def test_cli_takes_the_text_form_too(tiny_artifact, capsys, args):
    assert main(["route", "two birds on a wire", f"artifact={tiny_artifact}"] + args) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "mid"


def test_cli_refuses_two_policies_given_as_text_and_key(tiny_artifact, capsys):
    assert main(["route", "a cat", f"artifact={tiny_artifact}", "max_cost=0.6", 'policy="max_cost=0.7"']) == 2
    assert "at most one" in capsys.readouterr().err


def test_a_plug_in_policy_works_over_http(tiny_artifact, thrifty):
    from t2iroute import Router
    from t2iroute.serving import create_app
    from tests.test_serve import _start

    srv, t, url = _start(create_app(Router.load(tiny_artifact)))
    try:
        body = {"prompt": "two birds on a wire"}
        r = httpx.post(url + "/v1/route", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["backend"] == "slow", r.text
        r = httpx.post(
            url + "/v1/route", json={**body, "model": "router:policy={type: thrifty, factor: 1}"}, timeout=60
        )
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["backend"] == "fast" and d["policy"] == {"type": "thrifty", "factor": 1.0}
        r = httpx.post(url + "/v1/images/generations", json={**body, "model": "router:max_cost=0.6"}, timeout=60)
        assert r.status_code == 200 and r.json()["t2iroute"]["decision"]["backend"] == "mid", r.text
        for model, words in [
            ("router:policy={type: nope}", "unknown policy type 'nope'"),
            ("router:policy={type: thrifty, factor: x}", "factor"),
            ("router:speed=1", "use lam=X"),
        ]:
            r = httpx.post(url + "/v1/route", json={**body, "model": model}, timeout=60)
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == "model" and words in err["message"], r.text
    finally:
        srv.should_exit = True
        t.join(10)


def test_a_plug_in_policy_works_in_the_app(monkeypatch, tiny_artifact, thrifty):
    from tests.test_app import _app, _metrics

    at = _app(monkeypatch, tiny_artifact)
    at.text_area(key="prompts").input("two birds on a wire").run()
    assert _metrics(at)["Routed to"] == "slow"
    at.radio(key="budget_mode").set_value("policy text").run()
    at.text_input(key="policy_text").input("policy={type: thrifty, factor: 1}").run()
    assert _metrics(at)["Routed to"] == "fast" and not at.exception
    at.text_input(key="policy_text").input("max_cost=0.6").run()
    assert _metrics(at)["Routed to"] == "mid"
    at.text_input(key="policy_text").input("speed=1").run()
    assert any("use lam=X" in e.value for e in at.error)
