"""Graders against hand-graded outputs, and the containment of the code grader."""

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from longseq.power import sandbox
from longseq.power.graders import (
    code_blocks,
    code_program,
    extract_choice,
    extract_number,
    grade_choice,
    grade_code,
    grade_math,
    grade_number,
)
from longseq.power.problems import Problem

# --- math, numbers, multiple choice: cases a careful human graded ----------------------


@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        ("so \\boxed{4}. Hence the result is \\boxed{}", "4", True),  # empty box ignored
        ("x = \\boxed{2} or x = \\boxed{3}", "2, 3", True),  # two boxes, a list answer
        ("x = \\boxed{3} or x = \\boxed{2}", "2, 3", True),  # as a set
        ("x = \\boxed{2}", "2, 3", False),  # half the list
        ("\\boxed{5}, then \\boxed{2}, \\boxed{3}", "2, 3", False),  # 5 is not in the set
        ("The answer is 5. Checking again: \\boxed{7}", "7", True),  # boxed first
        ("The answer is 5. Checking again: \\boxed{7}", "5", False),
        ("\\boxed{\u22125}", "-5", True),  # Unicode minus
        ("\\boxed{\u22125}", "5", False),
        ("Problem: find x.\n\nProblem: restated, x + 1 = 3, so \\boxed{2}", "2", True),
        ("\\boxed{2}\n\nProblem: Solve y = 1.\nSolution: \\boxed{1}", "2", True),
    ],
)
def test_math_grader_hand_graded(completion, answer, ok):
    pytest.importorskip("math_verify")
    assert grade_math(completion, answer)[0] is ok


@pytest.mark.parametrize(
    "completion, answer, ok, shown",
    [
        ("The answer is 1/2", "0.5", True, "1/2"),  # a fraction, not 1
        ("so it is $\\frac{3}{4}$. The answer is $\\frac{3}{4}$.", "0.75", True, None),
        ("The temperature drops to \u22125 degrees. The answer is \u22125.", "-5", True, "-5"),
        ("The answer is \u22125.", "5", False, "-5"),
        ("The answer is 5. Let me check once more: \\boxed{7}", "#### 7", True, "7"),
        ("so \\boxed{4}, and the box is \\boxed{}", "#### 4", True, "4"),
        # a base model runs on into a new question after its answer
        ("6 * 7 = 42\n#### 42\n\nQuestion: Tom has 3 cats...\n#### 3", "#### 42", True, "42"),
        ("6 * 7 = 42. The answer is 42.\n\nQ: 2 + 2?\nA: The answer is 4.", "#### 42", True, "42"),
        ("The answer is 12. Wait: 3 * 4 + 2 = 14. The answer is 14.", "#### 14", True, "14"),
        ("So \\boxed{5}.\n\nProblem: What is 2 + 2?\nSolution: \\boxed{4}", "#### 5", True, "5"),
        ("He has 1,200 left.", "#### 1200", True, "1,200"),
    ],
)
def test_number_grader_hand_graded(completion, answer, ok, shown):
    got, pred = grade_number(completion, answer)
    assert got is ok
    if shown is not None:
        assert pred == shown


@pytest.mark.parametrize(
    "completion, letter",
    [
        ("The answer is a bit subtle: (A) fails at low T. Final answer: (B)", "B"),
        ("The answer is a bit subtle, so let us look again.", None),
        ("Final answer: **C**", "C"),
        ("The correct answer is option D.", "D"),
        ("After all that, the answer is (b).", "B"),
        ("A good guess is hard. The answer is (C).", "C"),
        ("A reasonable start.\nB", "B"),  # a letter alone on the last line
        ("A reasonable start, but I cannot tell.", None),  # an article is not an answer
        ("The correct option is B.", "B"),
        ("I'd pick C because it is stable.", "C"),
        ("(A) is too fast, (B) too slow.\n\\boxed{\\text{D}}", "D"),
        ("The answer is (B).\n\nQuestion: Which is heavier?\n(A) x (B) y\nAnswer: (A)", "B"),
    ],
)
def test_choice_extraction_hand_graded(completion, letter):
    assert extract_choice(completion) == letter
    assert grade_choice(completion, letter or "A")[0] is (letter is not None)


def test_number_extraction_reads_boxed_before_markers():
    assert extract_number("#### 3 and \\boxed{4}") == "4"
    assert extract_number("nothing numeric") is None


# --- code: what is read from a completion ------------------------------------------------

ADD = Problem(
    "add",
    "code",
    'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Sum."""\n',
    "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    entry_point="add",
)


@pytest.mark.parametrize(
    "completion, chat",
    [
        ("    return a + b\n", False),  # continuation of the prompt
        ("    return a + b\n\ndef other():\n    raise SystemExit(1)\n", False),
        ("def add(a, b):\n    return a + b\n", False),  # the whole function, plain
        (
            "from typing import List\n\ndef add(a, b):\n    return _h(a, b)\n\n\n"
            "def _h(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
            False,
        ),  # with a helper
        ("```Python\ndef add(a, b):\n    return a + b\n```", True),  # fence in any case
        ("```PY\ndef add(a, b):\n    return a + b\n```", True),
        ("Here:\n```python\ndef add(a, b):\n    return a + b\n", True),  # unclosed, cut off
        ("```\n    return a + b\n```", True),  # a body in an untagged fence
        ("```python\ndef add(a, b):\n    return a + b\n```\nbye", False),  # plain, fenced
        (
            "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n"
            "    import sys\n    sys.exit(3)\n```",
            True,
        ),  # the model's own main is left out
        ("def add(a, b):\n    return a + b", True),  # chat answer without a fence
    ],
)
def test_code_answers_in_every_shape_pass(completion, chat):
    assert grade_code(completion, ADD, chat=chat) == (True, "passed"), code_program(
        completion, ADD, chat
    )


def test_code_blocks_ignore_other_languages():
    text = "```bash\npip install x\n```\n```python3\nx = 1\n```"
    assert code_blocks(text) == ["x = 1\n"]


# --- code: passing means the tests ran to their end ---------------------------------------


@pytest.mark.parametrize(
    "ending",
    ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"],
)
def test_wrong_code_that_exits_early_fails(ending):
    # a continuation of the prompt whose top-level exit runs before the tests
    ok, why = grade_code("    return a - b\n" + ending, ADD)
    assert not ok and "before its end" in why


def test_exit_inside_the_function_fails():
    ok, why = grade_code("    import os\n    os._exit(0)\n", ADD)
    assert not ok and "before its end" in why
    ok, _ = grade_code("    import sys\n    sys.exit(0)\n", ADD)
    assert not ok


def test_a_program_that_ends_through_unittest_main_does_not_pass():
    prog = "import unittest\n\nclass T(unittest.TestCase):\n    def test_it(self):\n"
    prog += "        self.assertTrue(True)\n\nunittest.main()\nprint('the tests')\n"
    ok, why = sandbox.run_program(prog)
    assert not ok and "before its end" in why


WHOLE = """\
import sys
import unittest

def add(a, b):
    return a - b

class T(unittest.TestCase):
    def test_it(self):
        self.assertEqual(add(2, 3), -1)

print(add(2, 3))
assert add(1, 1) == 0
if __name__ == "__main__":
    unittest.main()
unittest.main()
sys.exit(0)
"""


def test_a_whole_function_is_judged_by_the_problems_tests_alone():
    """The model's own examples, asserts, unittest.main() and exits are left out:
    wrong code fails, right code passes, whatever the model's own tests say."""
    ok, why = grade_code(WHOLE, ADD)
    assert not ok and "AssertionError" in why
    assert grade_code(WHOLE.replace("a - b", "a + b"), ADD) == (True, "passed")
    fenced = "```python\n" + WHOLE + "```"
    assert not grade_code(fenced, ADD, chat=True)[0]
    assert grade_code(fenced.replace("a - b", "a + b"), ADD, chat=True)[0]


# --- code: containment ---------------------------------------------------------------------

NET = sandbox.isolation()
FULL = all(NET[k] for k in ("network", "filesystem", "processes", "sockets"))


def _modes():
    modes = [pytest.param(False, id="without namespaces")]
    marks = [] if FULL else [pytest.mark.skip(reason=f"no namespaces here: {NET['error']}")]
    return [pytest.param(True, id="namespaces", marks=marks), *modes]


def _run(body: str, namespaces: bool, timeout: float = 10.0):
    return sandbox.run_program(textwrap.dedent(body), timeout=timeout, namespaces=namespaces)


@pytest.mark.parametrize("namespaces", _modes())
@pytest.mark.parametrize(
    "body",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)\n",
        "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', 9))\n",
        "import importlib, socket\nimportlib.reload(socket)\n"
        "socket.create_connection(('127.0.0.1', 9), timeout=2)\n",
    ],
)
def test_network_connect_fails(body, namespaces, unused_tcp_server):
    body = body.replace("9)", f"{unused_tcp_server})")
    ok, why = _run(body, namespaces)
    # refused by the audit hook, the socket filter, or the empty network namespace
    words = ("network access is disabled", "operation not permitted", "unreachable")
    assert not ok and any(w in why.lower() for w in words), why


@pytest.fixture
def unused_tcp_server():
    """A listening local port: a connect that is not contained would succeed."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_a_child_python_cannot_connect(unused_tcp_server):
    if not FULL:
        pytest.skip(f"no namespaces here: {NET['error']}")
    child = f"import socket; socket.create_connection(('127.0.0.1', {unused_tcp_server}))"
    body = (
        f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
    )
    ok, why = _run(body, True)
    assert not ok and "CalledProcessError" in why


@pytest.mark.parametrize("namespaces", _modes())
def test_a_unix_socket_on_a_path_is_out_of_reach(namespaces, tmp_path):
    import socket
    import threading

    if not NET["sockets"]:
        pytest.skip(f"no socket filter here: {NET['error']}")
    path = str(tmp_path / "db.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(srv.accept()), daemon=True).start()
    ok, why = _run(f"import socket\nsocket.socket(socket.AF_UNIX).connect({path!r})\n", namespaces)
    assert not ok, why
    if namespaces:  # a child process, out of reach of the in-process guards
        child = f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})"
        ok, why = _run(
            f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}], check=True)\n",
            True,
        )
        assert not ok and "CalledProcessError" in why
    time.sleep(0.2)
    srv.close()
    assert not accepted


@pytest.mark.parametrize("namespaces", _modes())
def test_writes_outside_the_temporary_folder_fail(namespaces, tmp_path):
    target = tmp_path / "outside.txt"
    ok, why = _run(f"open({str(target)!r}, 'w').write('x')\n", namespaces)
    assert not ok and not target.exists(), why
    ok, why = _run(
        "import os\nos.makedirs('here/a')\nopen('here/a/f', 'w').write('x')\n", namespaces
    )
    assert ok, why
    # a shell child: stopped by the read-only mounts, or not started at all
    ok, why = _run(f"import os\nassert os.system('echo x > {target}') == 0\n", namespaces)
    assert not ok and not target.exists(), why


@pytest.mark.parametrize("namespaces", _modes())
def test_timeout_kills_the_whole_group(namespaces):
    marker = f"{secrets.randbelow(10**6) + 10**6}.5"
    body = f"""\
    import subprocess
    try:
        subprocess.Popen(['sleep', '{marker}'])
    except PermissionError:
        pass
    while True:
        pass
    """
    t0 = time.perf_counter()
    ok, why = _run(body, namespaces, timeout=1.5)
    assert not ok and "timed out" in why and time.perf_counter() - t0 < 8
    assert not _running(marker)


def test_background_children_are_gone_after_grading():
    if not FULL:
        pytest.skip(f"no namespaces here: {NET['error']}")
    marker = f"{secrets.randbelow(10**6) + 10**6}.5"
    completion = (
        "    import subprocess\n"
        f"    subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "    return a + b\n"
    )
    assert grade_code(completion, ADD) == (True, "passed")
    time.sleep(0.2)
    assert not _running(marker)


def test_ctrl_c_during_grading_leaves_no_program_behind(tmp_path):
    marker = f"{secrets.randbelow(10**6) + 10**6}.5"
    script = tmp_path / "grade.py"
    script.write_text(
        "from longseq.power.sandbox import run_program\n"
        f"run_program(\"import subprocess\\nsubprocess.Popen(['sleep', '{marker}'])\\n"
        'while True: pass\\n", timeout=60)\n'
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    # Ctrl-C's default action, even under a runner that ignores SIGINT (a shell's
    # background job does, and an ignored signal stays ignored across exec)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for _ in range(100):
        if _running(marker):
            break
        time.sleep(0.1)
    assert _running(marker), "the program did not start"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert b"KeyboardInterrupt" in err
    time.sleep(0.2)
    assert not _running(marker)


def _running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd:
                return True
    return False
