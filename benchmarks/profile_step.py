"""Per-HLO-op CPU profile of the Coconut train step (aggregated from a jax.profiler perfetto trace).

    taskset -c 1 python benchmarks/profile_step.py --threads 1 [--latents 4]
"""
import re, glob, gzip, json, os, sys, collections, tempfile
sys.argv += [] 
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
# build the step via coconut_step's module namespace without its timing loop
src = open(os.path.join(here, "coconut_step.py")).read().split("losses = []")[0]
ns = {"__file__": os.path.join(here, "coconut_step.py"), "__name__": "prof"}
exec(compile(src, "coconut_step.py", "exec"), ns)
jax, j, params, o, batch = ns["jax"], ns["j"], ns["params"], ns["o"], ns["batch"]
jax.block_until_ready(j(params, o, batch))
d = tempfile.mkdtemp()
with jax.profiler.trace(d, create_perfetto_trace=True):
    for _ in range(3):
        jax.block_until_ready(j(params, o, batch))
f = glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
ev = json.load(gzip.open(f))
ev = ev["traceEvents"] if isinstance(ev, dict) else ev
agg = collections.Counter(); cnt = collections.Counter()
for e in ev:
    if e.get("ph") == "X":
        agg[e["name"]] += e.get("dur", 0); cnt[e["name"]] += 1
hlo = j.lower(params, o, batch).compile().as_text()
lines = {}
for ln in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*)", ln)
    if m and m.group(1) not in lines:
        lines[m.group(1)] = re.sub(r", metadata=.*", "", m.group(2))
skip = ("ThunkExecutor", "$", "while")
ops = {k: v for k, v in agg.items() if not k.startswith(skip)}
print(f"sum of leaf ops: {sum(ops.values()) / 3e3:.1f} ms/step")
for k, v in collections.Counter(ops).most_common(int(os.environ.get("TOP", 40))):
    print(f"{v / 3e3:7.2f} ms {cnt[k] // 3:3d}x {k:28s} {lines.get(k, '?')[:200]}")

comps = {}
cur = None
for ln in hlo.splitlines():
    m = re.match(r"^%([\w.\-]+) \(", ln)
    if m:
        cur = m.group(1); comps[cur] = []
    elif cur and ln.startswith("}"):
        cur = None
    elif cur:
        comps[cur].append(ln)
def kind(k):
    ln = lines.get(k, "")
    m = re.search(r"calls=%([\w.\-]+)", ln)
    body = " ".join(comps.get(m.group(1), [])) if m else ln
    ops = set(re.findall(r"\} ([a-z\-]+)\(", body)) | set(re.findall(r"= [^ ]+ ([a-z\-]+)\(", ln))
    tags = []
    if "dot" in ops: tags.append("dot")
    if "concatenate" in ops or "pad" in ops: tags.append("concat/pad")
    if "reduce" in ops: tags.append("reduce")
    if "dynamic-update-slice" in ops or "dynamic-slice" in ops: tags.append("dus")
    if "exponential" in ops: tags.append("exp")
    if "transpose" in ops or "copy" in ops: tags.append("transpose/copy")
    if not tags: tags.append("elementwise")
    return "+".join(tags)
cat = collections.Counter(); ncat = collections.Counter()
for k, v in ops.items():
    cat[kind(k)] += v; ncat[kind(k)] += cnt[k] // 3
for kk, v in cat.most_common():
    print(f"{v / 3e3:7.1f} ms {ncat[kk]:5d} ops  {kk}")
print("ops per step:", sum(cnt[k] for k in ops) // 3)

want = os.environ.get("SHOW", "")
if want:
    for k, v in collections.Counter({k: v for k, v in ops.items() if kind(k) == want}).most_common(30):
        print(f"{v / 3e3:7.2f} ms {cnt[k] // 3:3d}x {k:28s} {lines.get(k, '?')[:150]}")
