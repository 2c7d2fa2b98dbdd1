"""Write max_for_live/protocol.json from bridge/protocol.py, so the device reads the same table as the bridge.

Run after changing the protocol table: python scripts/write_protocol_json.py
(tests/test_protocol.py fails while the committed file differs.)
"""

from __future__ import annotations

import logging
from pathlib import Path

from bridge.protocol import protocol_json

TARGET = Path(__file__).resolve().parent.parent / "max_for_live" / "protocol.json"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(protocol_json(), encoding="utf-8")
    logging.info("wrote %s", TARGET)


if __name__ == "__main__":
    main()
