"""Preservation of one patch, from an fmn-eval report's results.json: the judged accuracy,
before -> after, of every suite prompt that names none of the forgotten concepts (each
prompt and seed counted once, against the labels its suite entry expects), and of the
prompts that do name one (the forgetting side).

    python3 pipelines/lib/preservation.py REPORT_DIR/results.json NAME [NAME ...]
"""
import json
import re
import sys


def main(results_path, names):
    items = json.load(open(results_path))["items"]
    words = [w.lower() for w in names]
    groups = {"other prompts": {}, "naming them": {}}
    for it in items:
        tokens = re.findall(r"[a-z0-9]+", it["prompt"].lower())
        side = "naming them" if any(w in tokens for w in words) else "other prompts"
        # One verdict per image: an image reached from several suite entries keeps the first.
        groups[side].setdefault((it["prompt"], it["seed"], it["image_index"]), it)
    out = []
    for side, entries in groups.items():
        n = len(entries)
        if n == 0:
            continue
        before = sum(e["before"]["correct"] for e in entries.values()) / n
        after = sum(e["after"]["correct"] for e in entries.values()) / n
        prompts = len({p for p, _, _ in entries})
        out.append("%s: %.0f%% -> %.0f%% (%+.0f points; %d images of %d prompts)"
                   % (side, 100 * before, 100 * after, 100 * (after - before), n, prompts))
    print("; ".join(out))
    # The other prompts that lost most, per prompt.
    per_prompt = {}
    for (prompt, _, _), e in groups["other prompts"].items():
        b, a = per_prompt.get(prompt, (0, 0))
        per_prompt[prompt] = (b + e["before"]["correct"], a + e["after"]["correct"])
    worst = sorted(per_prompt.items(), key=lambda kv: kv[1][1] - kv[1][0])[:3]
    print("  most lost: " + "; ".join('"%s" %d -> %d' % (p, b, a) for p, (b, a) in worst))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
