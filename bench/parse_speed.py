"""Front-end speed: lines per second to parse, check, and check + compile a large generated workflow.

    python bench/parse_speed.py [--agents 500] [--repeat 5] [--profile check|compile]

The workflow has N LLM agents (each with a multi-line system template, a prompt, params, a regex and
a JSON extract), a tool agent, a flow chaining them with guarded exits, and an output reading every
agent. Each figure is the best of --repeat runs, wall-clock and CPU time. Prints a table; asserts
nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

from matrixlang.checker import check
from matrixlang.compiler import build_ir, dumps
from matrixlang.diagnostics import Diagnostics
from matrixlang.parser import _lark, parse
from matrixlang.source import Source


def generate(n_agents: int) -> str:
    """A valid workflow with `n_agents` agents chained start -> a0 -> a1 -> ... -> end."""
    out = [
        f'workflow big "a generated workflow with {n_agents} agents"',
        "",
        "input {\n  id: str\n  question: str\n  context: str?\n  tags: list[str]\n}",
        "",
        "limits { max_steps = 4000  row_timeout = 30m }",
        "",
        'model llm {\n  backend = "openai"\n  name = "meta-llama/Llama-3.1-8B-Instruct"\n'
        '  url = env("LLM_URL", "http://127.0.0.1:8000/v1")\n  temperature = 0.7\n  max_tokens = 512\n'
        "  tokens = 50..400\n  ttft = 150ms\n  per_token = 20ms\n}",
        "",
        'tool box { kind = "python"  timeout = 10s  memory = 256MB }',
        "",
    ]
    for i in range(n_agents):
        prev = f"a{i - 1}" if i else None
        reads = f"Previous answer: {{{{ {prev}.answer }}}} (score {{{{ {prev}.score }}}})" if prev else "Begin."
        out.append(
            f"agent a{i} {{\n"
            f"  model = llm\n"
            f'  system = """\n'
            f"    You are step {i} of a long pipeline. Question: {{{{ row.question }}}}\n"
            f"    {{% if row.context %}}Context: {{{{ row.context[:2000] }}}}{{% endif %}}\n"
            f"    {{% for t in row.tags %}}#{{{{ t }}}} {{% endfor %}}\n"
            f'    {reads}\n'
            f'  """\n'
            f'  prompt = "{{{{ last.text if last else \'Go.\' }}}}"\n'
            f"  params {{ temperature = 0.{i % 10}  max_tokens = {64 + i % 100} }}\n"
            f'  extract answer = regex(r"Answer:\\s*([A-J])")\n'
            f'  extract score = json("scores.step{i}")\n'
            f'  sim = "Step {i}. Answer: {{{{ [\'A\',\'B\',\'C\'] | random }}}} {{\\"scores\\": {{\\"step{i}\\": 3}}}}"\n'
            f"}}\n"
        )
    out.append('agent runner {\n  tool = box\n  input = "print({{ row.id | tojson }})"\n'
               '  extract passed = regex(r"(ok)")\n}\n')
    flow = ["flow {", "  start -> a0"]
    for i in range(n_agents):
        nxt = f"a{i + 1}" if i + 1 < n_agents else "runner"
        flow.append(f'  a{i} -> fail "bad_{i}" when a{i}.answer == null and visits.a{i} >= 3')
        flow.append(f"  a{i} -> {nxt} when a{i}.answer in [\"A\", \"B\"] or len(a{i}.text) > {i % 50}")
        flow.append(f"  a{i} -> a{i}")
    flow += ["  runner -> end when runner.passed != null", '  runner -> fail "tests"', "}"]
    out += flow
    fields = "".join(f"\n  s{i} = a{i}.score" for i in range(n_agents))
    out.append("\noutput {\n  id = row.id\n  final = runner.text" + fields + "\n}\n")
    return "\n".join(out)


def best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """The best wall-clock and the best CPU time of `repeat` runs (CPU time is steadier on a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", choices=["check", "compile"], help="print a cProfile of one run instead")
    args = ap.parse_args()

    text = generate(args.agents)
    src = Source("big.mx", text)
    lines = src.line_count
    an = check(src)
    assert an.ok and not an.diags.items, [d.message for d in an.diags.items[:5]]
    _lark()  # build the parser once, outside the timings

    def lark_only() -> None:
        _lark().parse(text)

    def parse_only() -> None:
        parse(Source("big.mx", text), Diagnostics())

    def check_only() -> None:
        check(Source("big.mx", text))

    def check_compile() -> None:
        dumps(build_ir(check(Source("big.mx", text))))

    # One syntax error in the middle: the parser recovers declaration by declaration.
    broken = text.replace(f"agent a{args.agents // 2} {{\n  model = llm", f"agent a{args.agents // 2} {{\n  model: llm")
    assert broken != text

    def check_broken() -> None:
        an = check(Source("big.mx", broken))
        assert [d.code for d in an.diags.items] == ["E001"], [d.message for d in an.diags.items[:5]]

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(check_only if args.profile == "check" else check_compile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return

    print(f"{args.agents} agents, {lines} lines, {len(text)} characters; best of {args.repeat}")
    print(f"{'phase':<28}{'wall s':>9}{'lines/s':>10}{'CPU s':>9}{'lines/CPU-s':>13}")
    for name, fn in [("lark parse (tree only)", lark_only), ("parse (AST, spans)", parse_only),
                     ("check", check_only), ("check + compile (IR JSON)", check_compile),
                     ("check, 1 syntax error", check_broken)]:
        wall, cpu = best(fn, args.repeat)
        print(f"{name:<28}{wall:>9.3f}{lines / wall:>10,.0f}{cpu:>9.3f}{lines / cpu:>13,.0f}")


if __name__ == "__main__":
    main()
