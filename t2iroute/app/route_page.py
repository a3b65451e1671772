"""Page 1: route prompts, see every backend's prediction, generate baseline vs routed."""

import altair as alt
import streamlit as st

from t2iroute.app import logic


@st.cache_resource(show_spinner="Loading the router...", max_entries=4)
def _router(key: tuple[str, float]):
    return logic.load_router(key[0])


@st.cache_resource(show_spinner="Loading the scorer...", max_entries=2)
def _scorer(name: str):
    return logic.build_named_scorer(name)


def _bars(df, field: str, title: str, zero: bool = True):
    """Horizontal bars per backend, the chosen one highlighted, values written at the bar ends.

    ``zero=False`` starts the bars just below the smallest value: backends' predicted qualities
    differ by little next to the metric's level, and from zero they would look all the same.
    """
    lo, hi = float(df[field].min()), float(df[field].max())
    if zero:
        base, domain = 0.0, [min(0.0, lo), hi * 1.15 if hi > 0 else 1.0]
    else:
        pad = (hi - lo) or abs(hi) * 0.05 or 1.0
        base, domain = lo - pad, [lo - pad, hi + 0.4 * pad]
    x = alt.X(f"{field}:Q", title=title, scale=alt.Scale(domain=domain, nice=False))
    y = alt.Y("backend:N", sort=None, title=None)
    bars = (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            x=x,
            x2=alt.datum(base),
            y=y,
            color=alt.Color(
                "chosen:N",
                scale=alt.Scale(domain=[True, False], range=["#e4572e", "#8aa1b1"]),
                legend=alt.Legend(title="chosen"),
            ),
            tooltip=[
                "backend",
                alt.Tooltip("predicted_quality:Q", format=".4g"),
                alt.Tooltip("cost:Q", format=".4g"),
                alt.Tooltip("utility:Q", format=".4g"),
            ],
        )
    )
    labels = (
        alt.Chart(df)
        .mark_text(align="left", dx=3, fontSize=11)
        .encode(x=x, y=y, text=alt.Text(f"{field}:Q", format=".4g"))
    )
    return bars + labels


st.title("Route and generate")

with st.sidebar:
    st.header("Router")
    artifact = st.text_input("Router artifact folder", value=logic.default_artifact(), key="artifact")
    mode = st.radio(
        "Policy",
        list(logic.POLICIES),
        key="budget_mode",
        help="; ".join(f"{k}: {v[1]}" for k, v in logic.POLICIES.items()),
    )

try:
    router = _router(logic.artifact_key(artifact))
except logic.USER_ERRORS as e:
    st.error(f"Cannot load the router: {logic.describe(e)}")
    st.info("`make demo` writes a demo router to outputs/demo/testbed/router (the trained testbed models).")
    st.stop()

with st.sidebar:
    policy_kw: dict = {}
    costs = sorted(float(c) for c in router.costs)
    unit = router.cost_unit
    cost_step = float(costs[-1] - costs[0]) / 20 or 0.01
    if mode == "lambda":
        policy_kw["lam"] = st.number_input(
            "lambda", min_value=0.0, value=float(router.lam or 0.0), step=0.01, format="%.4f", key="lam"
        )
    elif mode == "target mean cost":
        policy_kw["budget"] = st.number_input(
            f"target mean cost per prompt ({unit})",
            min_value=0.0,
            value=float(costs[len(costs) // 2]),
            step=cost_step,
            format="%.4f",
            key="budget",
        )
    elif mode == "max cost":
        policy_kw["max_cost"] = st.number_input(
            f"max cost per prompt ({unit})",
            min_value=0.0,
            value=float(costs[len(costs) // 2]),
            step=cost_step,
            format="%.4f",
            key="max_cost",
        )
    elif mode == "policy text":
        policy_kw["policy"] = st.text_input(
            "policy",
            value=f"lam={float(router.lam or 0.0):g}",
            key="policy_text",
            help=logic.POLICIES["policy text"][1],
        )
    elif mode == "quality floor":
        floor0, floor_help = logic.floor_setting(router)
        policy_kw["quality_floor"] = st.number_input(
            f"quality floor ({router.metric}, {'higher' if router.higher_is_better else 'lower'} is better)",
            value=floor0,
            format="%.4f",
            key="quality_floor",
            help=floor_help,
        )
    log_dir = st.text_input(
        "Decision log folder",
        value=logic.default_log_dir(),
        key="log_dir",
        help="Images generated here are logged to this folder and can be rated below; "
        "`t2iroute train ... feedback=FOLDER` learns from the ratings. Empty: no log.",
    )
    try:
        log_dir = logic.attach_log(router, log_dir)
    except logic.USER_ERRORS as e:
        st.error(f"Cannot open the decision log: {logic.describe(e)}")
        log_dir = None
    st.caption(
        f"{len(router.backend_names)} backends · metric `{router.metric}` "
        f"({'higher' if router.higher_is_better else 'lower'} is better) · "
        f"trained policy `{router.policy.describe()}`"
    )

text = st.text_area("Prompt, or many prompts one per line", value=logic.DEFAULT_PROMPT, height=110, key="prompts")
st.button("Route", key="route", type="primary")  # any rerun routes the text as it is now

try:
    prompts = logic.parse_prompts(text)
    decisions = router.route(prompts, **policy_kw)
except logic.USER_ERRORS as e:
    st.error(f"Cannot route: {logic.describe(e)}")
    st.stop()

far = logic.domain_warning(decisions)
if far:
    st.warning(far)

used_lam = decisions[0].lam
# generate under the policy that routed: a budget's lambda was calibrated on every prompt entered
gen_kw = {"lam": used_lam} if used_lam is not None else dict(policy_kw)
if len(decisions) == 1:
    d = decisions[0]
    st.text(f"Decision for: {d.prompt}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Routed to", d.backend)
    c2.metric("Predicted quality", f"{d.predicted_quality[d.backend]:.4g}")
    c3.metric("Cost", f"{d.cost[d.backend]:.4g} {unit}")
    c4.metric("Policy", logic.policy_label(d))
    if d.predicted_clipped and router.observed_range is not None:
        lo, hi = router.observed_range
        st.caption(
            f"Predictions beyond the metric's observed range [{lo:.4g}, {hi:.4g}] are shown clipped to it "
            "(routing used the predictor's raw values)."
        )
else:
    table = logic.decisions_table(decisions)
    c1, c2, c3 = st.columns(3)
    c1.metric("Prompts", len(decisions))
    c2.metric("Mean cost", f"{table.cost.mean():.4g} {unit}")
    c3.metric("Policy", logic.policy_label(decisions[0]))
    counts = logic.backend_counts(decisions, router.backend_names)
    st.altair_chart(
        alt.Chart(counts, title="Prompts per backend")
        .mark_bar()
        .encode(x="prompts:Q", y=alt.Y("backend:N", sort=None, title=None), tooltip=["backend", "prompts"]),
        width="stretch",
    )
    st.dataframe(table, hide_index=True, key="decisions")

pick = 0
if len(decisions) > 1:
    pick = st.selectbox(
        "Prompt to inspect and generate",
        range(len(decisions)),
        key="pick",
        format_func=lambda i: f"{i + 1}: {decisions[i].prompt[:90]}",
    )
d = decisions[pick]
bt = logic.backend_table(d)
left, right = st.columns(2)
# quality differences between backends are small next to the metric's level: no zero baseline
left.altair_chart(_bars(bt, "predicted_quality", f"Predicted {router.metric}", zero=False), width="stretch")
right.altair_chart(_bars(bt, "cost", f"Cost ({unit})"), width="stretch")
with st.expander("Every backend's numbers"):
    st.dataframe(bt, hide_index=True)
    st.caption(
        "Stage timings of this routing call (s per prompt): "
        + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in d.timings_s.items())
    )

st.subheader("Generate: baseline vs routed")
configured = list(router.backends)
if not configured:
    st.warning(
        "This artifact stores no backend configs, so it can route but not generate. Train with "
        "`backends=[...]` (e.g. `t2iroute train ... backends=[tiny_10,tiny_20]`) or load it in Python "
        "with `Router.load(path, backends=...)`."
    )
    st.stop()
base_default = logic.default_baseline(router)
scorers = ["none"] + logic.scorer_names()
sc_default = logic.default_scorer(router) or "none"
g1, g2, g3 = st.columns(3)
baseline = g1.selectbox("Baseline backend", configured, index=configured.index(base_default), key="baseline")
seed = int(g2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="seed"))
scorer_name = g3.selectbox(
    "Score with",
    scorers,
    index=scorers.index(sc_default),
    key="scorer",
    help="CLIP score of each image against its prompt (clip_tiny: offline random weights)",
)

if st.button("Generate baseline and routed", key="generate", type="primary"):
    try:
        with st.spinner("Generating..."):
            sc = _scorer(scorer_name) if scorer_name != "none" else None  # fails here, before any image
            base = router.generate(d.prompt, seed=seed, backend=baseline, **gen_kw)
            routed = router.generate(d.prompt, seed=seed, **gen_kw)
            scores = {}
            if sc is not None:
                scores = dict(zip(("baseline", "routed"), sc.score([base.image, routed.image], [d.prompt] * 2)))
        st.session_state["generated"] = {
            "key": (artifact, d.prompt, seed),
            "baseline": base,
            "routed": routed,
            "scores": scores,
            "scorer": scorer_name,
        }
    except logic.USER_ERRORS as e:
        st.session_state.pop("generated", None)
        st.error(f"Cannot generate: {logic.describe(e)}")

gen = st.session_state.get("generated")
if gen and gen["key"] == (artifact, d.prompt, seed):
    cols = st.columns(2)
    for col, which in zip(cols, ("baseline", "routed")):
        r = gen[which]
        with col:
            st.markdown(f"**{which.capitalize()}: `{r.backend}`**")
            st.image(r.image, width=min(512, max(256, r.image.width)))  # tiny 64 px images: 4x
            facts = [f"latency **{r.latency_s:.3f} s**"]
            if r.diffusion is not None:  # diffusion backends only: remote API models have no steps
                facts += [
                    f"steps run **{r.steps_run}/{r.steps_budget}**",
                    f"early stop **{'yes' if r.stopped_early else 'no'}**",
                ]
            if gen["scores"]:
                facts.append(f"{gen['scorer']} **{gen['scores'][which]:.2f}**")
            st.markdown(" · ".join(facts))
            if r.fallbacks:
                st.warning("Fell back: " + "; ".join(f"{f['backend']}: {f['error']}" for f in r.fallbacks))
    b, r = gen["baseline"], gen["routed"]
    if r.latency_s > 0:
        steps = (
            f" ({r.steps_run} vs {b.steps_run} denoising steps)"
            if r.diffusion is not None and b.diffusion is not None
            else ""
        )
        st.caption(
            f"Routed latency is {r.latency_s / b.latency_s:.2f}x the baseline's{steps}; "
            f"routing itself took {r.route_s * 1e3:.1f} ms."
        )

    if log_dir is None:
        st.caption("Set a decision log folder in the sidebar to rate these images (feedback for retraining).")
    else:
        st.markdown("**Rate these images**")
        with st.form("rate"):
            r1, r2 = st.columns(2)
            given = {}
            for col, which in zip((r1, r2), ("baseline", "routed")):
                res = gen[which]
                guess = gen["scores"].get(which, res.decision.predicted_quality.get(res.backend, 0.0))
                given[res.id] = col.number_input(
                    f"{which.capitalize()} (`{res.backend}`): your {router.metric} score",
                    value=float(guess),
                    format="%.4f",
                    key=f"rate_{which}",
                )
            better = st.radio(
                "Which is better?",
                list(logic.PREFERENCES),
                horizontal=True,
                key="rate_better",
                help="Unless the preferred image already scores higher, a preference places the two "
                "scores around their mean, one spread of this prompt's predicted qualities apart "
                "(the same: both at the mean).",
            )
            if st.form_submit_button("Record feedback"):
                ids = [gen["baseline"].id, gen["routed"].id]
                try:
                    scores = logic.apply_preference(
                        [given[i] for i in ids], better, spread=logic.prediction_spread(gen["routed"].decision)
                    )
                    logic.record_ratings(router, dict(zip(ids, scores)))
                    st.success(f"Recorded feedback for {ids[0]} and {ids[1]} in {log_dir}")
                except logic.USER_ERRORS as e:
                    st.error(f"Cannot record feedback: {logic.describe(e)}")
