import json
import logging

from sfu import log


def test_redact_masks_personal_data():
    text = "peer 192.168.1.20:5000 ::1 alice@example.com +44 20 7946 0958 room=abc"
    out = log.redact(text)
    for secret in ("192.168.1.20", "alice@example.com", "7946"):
        assert secret not in out
    assert "room=abc" in out


def test_json_lines_are_redacted():
    record = logging.LogRecord("sfu.test", logging.INFO, __file__, 1, "from 10.0.0.1", None, None)
    record.fields = {"who": "bob@example.org", "n": 3}
    line = json.loads(log.JsonFormatter().format(record))
    assert line["msg"] == "from <ip>"
    assert line["who"] == "<email>" and line["n"] == 3
