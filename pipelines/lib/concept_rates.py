"""Per-concept judged rates of a toy-world sample folder, before vs after a patch.

    python3 pipelines/lib/concept_rates.py BEFORE_DIR BEFORE_JUDGE.json AFTER_DIR AFTER_JUDGE.json NAME [NAME ...]

For each forgotten NAME: the share of images of prompts naming it in which the judge sees it,
before -> after. For every other concept named by prompts that name no forgotten concept: the
same share over those prompts, before -> after, and the largest loss among them. Concepts:
the toy world's objects, colours, `stripes`, and characters (judge labels).
"""
import json
import re
import sys

OBJECTS = ["circle", "square", "triangle", "cross"]
COLOURS = ["red", "green", "blue", "yellow"]
CHARACTERS = ["bob", "kiki"]
CONCEPTS = OBJECTS + COLOURS + ["stripes"] + CHARACTERS


def seen(verdict, concept):
    if concept in OBJECTS:
        return verdict["object"]["label"] == concept
    if concept in COLOURS:
        return verdict["colour"]["label"] == concept
    if concept == "stripes":
        return verdict["striped"]["label"] == "striped"
    return verdict["character"]["label"] == concept


def load(folder, judge_path):
    manifest = json.load(open(folder + "/manifest.json"))
    verdicts = {v["file"].split("/")[-1]: v for v in json.load(open(judge_path))["images"]}
    return [(im["prompt"], verdicts[im["file"]]) for im in manifest["images"]]


def words(prompt):
    return set(re.findall(r"[a-z0-9]+", prompt.lower()))


def rate(items, concept, keep):
    hits = [seen(v, concept) for p, v in items if concept in words(p) and keep(p)]
    return (sum(hits) / len(hits), len(hits)) if hits else (None, 0)


def main(bdir, bjudge, adir, ajudge, names):
    before, after = load(bdir, bjudge), load(adir, ajudge)
    out = {"forgotten": {}, "others": {}}
    for n in names:
        (b, k), (a, _) = rate(before, n, lambda p: True), rate(after, n, lambda p: True)
        out["forgotten"][n] = {"before": b, "after": a, "images": k}
    clean = lambda p: not (words(p) & set(names))
    for c in CONCEPTS:
        if c in names:
            continue
        (b, k), (a, _) = rate(before, c, clean), rate(after, c, clean)
        if k:
            out["others"][c] = {"before": b, "after": a, "images": k}
    losses = [100 * (o["before"] - o["after"]) for o in out["others"].values()]
    out["worst_other_loss_points"] = max(losses) if losses else None
    # A forgotten name no prompt uses (a control: what editing alone costs) has no rate.
    f = lambda d: "%3.0f%% -> %3.0f%%" % (100 * d["before"], 100 * d["after"]) if d["images"] else "(no prompts)"
    line = "; ".join("%s %s" % (n, f(d)) for n, d in out["forgotten"].items())
    others = ", ".join("%s %s" % (c, f(d)) for c, d in out["others"].items())
    print("forgotten: %s | worst other loss %+.1f points | others: %s" % (line, out["worst_other_loss_points"] or 0, others))
    json.dump(out, open(adir + ".rates.json", "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:5], sys.argv[5:])
