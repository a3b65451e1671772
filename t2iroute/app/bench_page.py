"""Page 2: a benchmark folder (t2iroute bench ... out_dir=DIR) as an interactive chart."""

import altair as alt
import pandas as pd
import streamlit as st

from t2iroute.app import logic

st.title("Benchmark")
folder = st.text_input(
    "Benchmark output folder (summary.json, curves.json)", value=logic.default_bench(), key="bench_dir"
)
try:
    summary, curves = logic.read_bench(folder)
    frames = logic.bench_frames(summary, curves)
except logic.USER_ERRORS as e:
    st.error(f"Cannot read the benchmark: {logic.describe(e)}")
    st.stop()

head = logic.bench_headline(summary)
c1, c2, c3 = st.columns(3)
c1.metric("Cost saved at equal quality", f"{head['cost saved at equal quality (%)']:.1f}%")
c2.metric("Quality gain at equal cost", f"{head['quality gain at equal cost']:+.4g}")
c3.metric("AIQ (router / oracle)", f"{head['AIQ router']:.4g} / {head['AIQ oracle']:.4g}")
st.caption(
    f"data `{head['data']}` · metric `{head['metric']}` · seed {head['seed']} · "
    f"{head['n_test']} test prompts · best single backend `{head['best single backend']}`"
)

log_x = st.checkbox("Log cost axis", value=False, key="log_x")
show = st.multiselect(
    "Show",
    ["router", "oracle", "router (each lambda)", "single backends"],
    default=["router", "oracle", "single backends"],
    key="series",
)
scale = alt.Scale(type="log") if log_x else alt.Scale(zero=False)
colors = alt.Scale(domain=["router", "oracle", "router (each lambda)"], range=["#e4572e", "#2e86ab", "#e4572e"])
layers = []
lines = frames["lines"][frames["lines"].series.isin(show)]
if len(lines):
    layers.append(
        alt.Chart(lines)
        .mark_line(strokeWidth=2.5)
        .encode(
            x=alt.X("cost:Q", scale=scale, title=f"mean cost per prompt ({summary.get('cost_unit', 's')})"),
            y=alt.Y("quality:Q", scale=alt.Scale(zero=False), title=f"mean {head['metric']}"),
            color=alt.Color("series:N", scale=colors, title=None),
            strokeDash=alt.StrokeDash(
                "series:N", scale=alt.Scale(domain=["router", "oracle"], range=[[1, 0], [6, 4]]), legend=None
            ),
            tooltip=["series", alt.Tooltip("cost:Q", format=".4g"), alt.Tooltip("quality:Q", format=".4g")],
        )
    )
if "router (each lambda)" in show:
    tips = ["series", alt.Tooltip("cost:Q", format=".4g"), alt.Tooltip("quality:Q", format=".4g")]
    if "lambda" in frames["points"]:
        tips.append(alt.Tooltip("lambda:Q", format=".4g"))
    layers.append(
        alt.Chart(frames["points"])
        .mark_circle(size=14, opacity=0.4)
        .encode(
            x=alt.X("cost:Q", scale=scale),
            y="quality:Q",
            color=alt.Color("series:N", scale=colors, title=None),
            tooltip=tips,
        )
    )
if "single backends" in show:
    be = frames["backends"]
    base = alt.Chart(be).encode(
        x=alt.X("cost:Q", scale=scale),
        y="quality:Q",
        tooltip=["backend", alt.Tooltip("cost:Q", format=".4g"), alt.Tooltip("quality:Q", format=".4g")],
    )
    layers += [
        base.mark_point(shape="diamond", size=80, filled=True, color="black"),
        base.mark_text(align="left", dx=6, fontSize=10).encode(text="backend"),
    ]
if layers:
    st.altair_chart(alt.layer(*layers).interactive(), width="stretch")
    st.caption(
        "Solid orange: the router (upper hull of its points over lambda: mixing two lambdas reaches "
        "the line between them). Dashed blue: the oracle. Diamonds: single backends. Drag to pan, "
        "scroll to zoom, hover for values."
    )
else:
    st.info("Pick at least one series to show.")

st.subheader("Single backends")
st.dataframe(frames["backends"].sort_values("cost"), hide_index=True)
if summary.get("by_source"):
    st.subheader("By prompt source")
    st.dataframe(pd.DataFrame(summary["by_source"]).T, key="by_source")
with st.expander("summary.json"):
    st.json({k: v for k, v in summary.items() if k != "by_source"}, expanded=False)
