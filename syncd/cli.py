"""Command line: run, once, status, check, retry, pause, resume, schema, init, systemd-unit. Errors become
exit codes here only.

Exit codes: 0 success; 1 some items failed or a target check failed; 2 configuration error
(including ``syncd init`` refusing to overwrite a configuration, an unknown user or group);
3 local problem (state directory locked or unwritable, disk full, a directory that cannot be made);
4 the journal was deleted, replaced, truncated or is damaged (``JournalLost``: the message says
how to go on; the unit does not restart on it); 130 interrupted (Ctrl-C before the command
could stop by itself); 141 the reader of the output went away (``syncd status | head -1``), as
for any tool killed by SIGPIPE.

This module imports only the standard library and ``syncd.errors`` at load time, so ``--help``
is quick and a Ctrl-C while the rest loads is an exit code, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from syncd import __version__
from syncd.errors import ConfigError, JournalLost, LocalError, SyncdError

if TYPE_CHECKING:
    from syncd.config import Config

log = logging.getLogger("syncd")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCAL, EXIT_JOURNAL_LOST = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as for `yes | head -1`


def _config(args) -> Config:
    from syncd.config import default_config_path, load_config

    return load_config(default_config_path(args.config))


def cmd_run(args) -> int:
    from syncd import logconfig
    from syncd.service import run_service

    config = _config(args)
    logconfig.configure(config.daemon.log_level, config.daemon.log_format)
    for warning in config.warnings:
        log.warning(warning)
    return run_service(config)


def cmd_once(args) -> int:
    from syncd import logconfig
    from syncd.progress import Progress, TerminalLine, summary
    from syncd.service import run_once

    config = _config(args)
    if args.dry_run:
        from syncd.dryrun import dry_run, render

        logconfig.configure(args.log_level or "WARNING", config.daemon.log_format)
        result = dry_run(config, max_wait=args.max_wait)
        print(render(result))
        return result.exit_code
    # At a terminal: one line rewritten in place, the log lines above it; else plain lines.
    on_terminal = sys.stderr is not None and sys.stderr.isatty()  # None: started with stderr closed
    line = TerminalLine(sys.stderr) if on_terminal and not args.no_progress else None
    logconfig.configure(args.log_level or config.daemon.log_level, config.daemon.log_format, stream=line)
    progress = None if args.no_progress else Progress(line)
    result = run_once(config, max_wait=args.max_wait, progress=progress)
    for key, target, reason in result.failed:
        print(f"FAILED {key} -> {target}: {reason}")
    for key, target, reason in result.pending:
        print(f"PENDING {key} -> {target}: {reason}")
    for target, reason in result.paused.items():
        print(f"PAUSED target {target}: {reason}")
    for key, note in result.late:
        print(f"LATE {key}: {note}")
    for directory, reason in result.unreadable:
        print(f"UNREADABLE {directory}: {reason} (skipped: nothing in it is delivered)")
    if result.disk_low:
        print(f"DISK LOW: {result.disk_low}")
    print(summary(delivered_now=result.delivered_now, delivered=result.delivered, failed=len(result.failed),
                  skipped=len(result.pending), sent_bytes=result.sent_bytes, seconds=result.seconds))
    if result.interrupted:
        _say("syncd: interrupted: what was not delivered goes at the next run")
    return result.exit_code


def cmd_status(args) -> int:
    from syncd import status

    config = _config(args)
    data = status.collect(config, failed_limit=10**9 if args.all else status.MAX_FAILED_LISTED)
    if args.json:
        print(status.as_json(data))
    else:
        print(status.render(data))
    return EXIT_OK


def cmd_check(args) -> int:
    from syncd.daemon import build_targets
    from syncd.folders import Folders, unreadable_dirs
    from syncd.journal.inspect import inspect_journal
    from syncd.journal.store import Store

    config = _config(args)
    print(f"configuration {config.config_path}: ok")
    for warning in config.warnings:
        print(f"warning: {warning}")
    ok = True
    state_dir = config.daemon.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        print(f"state directory {state_dir}: writable")
    except OSError as exc:
        ok = False
        print(f"state directory {state_dir}: NOT writable: {exc.strerror}; "
              "fix its permissions or set [daemon] state_dir")
    journal = inspect_journal(state_dir)
    try:
        Store.check_state_dir(state_dir)
        lost = None
    except JournalLost as exc:
        lost = exc
    if lost is not None:
        ok = False
        print(f"journal: LOST: {lost}")
    if journal.exists and journal.problems:
        ok = False
        for problem in journal.problems:
            print(f"journal {journal.path}: {problem}")
    elif lost is not None:
        pass
    elif not journal.exists:
        print(f"journal {journal.path}: none yet (made at the first start)")
    else:
        counts = ", ".join(f"{n} {name}" for name, n in journal.rows.items())
        print(f"journal {journal.path}: ok (schema {journal.version}; {counts})")
    for folder, rules in zip(config.folders, (f.rules for f in Folders(list(config.folders), config.daemon.ignore))):
        if os.path.isdir(folder.path):
            print(f"folder {folder.path}: ok -> {', '.join(folder.targets)}")
            for path, reason in unreadable_dirs(folder.path, rules).items():
                print(f"  warning: cannot read the directory {path}: {reason}; skipped, nothing in it is delivered: "
                      "give the user syncd runs as read access to it, or add its name to the folder's exclude")
        elif folder.create:
            print(f"folder {folder.path}: missing, created at start-up")
        else:
            ok = False
            print(f"folder {folder.path}: MISSING (create it, or set create = true)")
    for name, target in build_targets(config).items():
        try:
            warnings = target.check()
            print(f"target {name} ({target.platform}): ok")
            for warning in warnings:
                print(f"  warning: {warning}")
            lost = target.unsupported_types()
            if lost:
                print(f"  note: {target.platform} cannot represent {', '.join(lost)}: "
                      "such labels are reported, not sent")
        except SyncdError as exc:
            ok = False
            print(f"target {name} ({target.platform}): FAILED: {exc}")
        finally:
            target.close()
    return EXIT_OK if ok else EXIT_FAILED


def cmd_retry(args) -> int:
    from syncd.journal.store import Store

    config = _config(args)
    if not args.keys and not args.failed and not args.incomplete:
        raise ConfigError("say which items to retry: syncd retry KEY ..., --failed or --incomplete")
    store = Store.open(config.daemon.state_dir)
    try:
        if args.incomplete:
            changed = store.requeue_incomplete(time.time())
        else:
            changed = store.requeue(None if args.failed else args.keys, time.time())
    finally:
        store.close()
    print(f"requeued {changed} failed deliveries/items; a running daemon picks them up at its next pass")
    return EXIT_OK


def cmd_pause(args) -> int:
    return _pause(args, True)


def cmd_resume(args) -> int:
    return _pause(args, False)


def _pause(args, paused: bool) -> int:
    from syncd.control import set_paused

    config = _config(args)
    result = set_paused(config, args.target, paused)
    verb = "paused" if paused else "resumed"
    if not result.changed:
        print(f"target {result.target} was already {'paused by operator' if paused else 'not paused by operator'}")
    elif result.pid is not None and result.signal_error is None:
        print(f"target {result.target} {verb}; the running syncd (pid {result.pid}) "
              + ("holds its deliveries now" if paused else "resumes its deliveries now"))
    elif result.pid is not None:
        print(f"target {result.target} {verb} in the journal; the running syncd (pid {result.pid}) could not be told: "
              f"{result.signal_error}; it notices within 30s")
    else:
        print(f"target {result.target} {verb}; no syncd is running: "
              + ("it stays paused when one starts" if paused else "deliveries go on when one starts"))
    return EXIT_OK


def cmd_schema(args) -> int:
    from syncd.labels.sidecar import sidecar_json_schema

    print(json.dumps(sidecar_json_schema(), indent=2))
    return EXIT_OK


def cmd_init(args) -> int:
    from syncd.install import init_dir

    plan = init_dir.plan(args.dir, user=args.user, group=args.group, mode=args.mode, state_dir=args.state_dir)
    for line in init_dir.create(plan):
        print(line)
    print(init_dir.next_steps(plan))
    return EXIT_OK


def cmd_systemd_unit(args) -> int:
    from syncd.install.shipped import shipped_text
    from syncd.install.unit import render_unit

    if args.sysusers:
        sys.stdout.write(shipped_text("syncd.sysusers"))
        return EXIT_OK
    config = _config(args)
    text, warnings = render_unit(config, user=args.user, credentials_dir=Path(args.credentials_dir))
    sys.stdout.write(text)
    for warning in warnings:
        print(f"syncd systemd-unit: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _seconds(text: str) -> float:
    """A number of seconds for argparse: finite and not negative (``nan`` would wait forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds, 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd", description="Deliver drop-folder items exactly once to ML data platforms.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", help="configuration file (default: $SYNCD_CONFIG)")
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the daemon in the foreground (systemd runs it this way)")
    once = add("once", cmd_once, "scan, deliver everything due, wait for the results, exit (0 ok, 1 failures)")
    once.add_argument("--max-wait", type=_seconds, default=600.0,
                      help="seconds to keep retrying transient failures (600)")
    once.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override [daemon] log_level")
    once.add_argument("--dry-run", "-n", action="store_true",
                      help="scan, settle and validate, then print per target what would be sent; send nothing "
                           "and leave the journal as it was")
    once.add_argument("--no-progress", action="store_true",
                      help="no progress line (at a terminal) or progress log lines (elsewhere)")
    status = add("status", cmd_status, "delivered, pending and failed items per folder and target")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--all", action="store_true", help="list every failed item, not the first 50")
    add("check", cmd_check, "validate the configuration and reach every target")
    retry = add("retry", cmd_retry, "requeue failed items (by key, or all with --failed)")
    retry.add_argument("keys", nargs="*", help="item keys, e.g. cam1/frame_0001")
    retry.add_argument("--failed", action="store_true", help="requeue every failed item")
    retry.add_argument("--incomplete", action="store_true",
                       help="deliver again items a target took without some parts (status: 'not sent'), "
                            "e.g. after installing nibabel")
    pause = add("pause", cmd_pause, "hold every delivery to TARGET (a running daemon within a second; "
                                    "survives restarts) until `syncd resume TARGET`")
    pause.add_argument("target", help="a target name, as in [targets.NAME]")
    resume = add("resume", cmd_resume, "deliver to TARGET again after `syncd pause TARGET`")
    resume.add_argument("target", help="a target name, as in [targets.NAME]")
    schema = sub.add_parser("schema", help="print the JSON Schema of the sidecar file")
    schema.set_defaults(func=cmd_schema)
    init_help = ("make DIR ready for the service: DIR/config.toml, the inbox (group-writable), "
                 "the dataset and state directories")
    init = sub.add_parser("init", help=init_help, description=init_help)
    init.add_argument("--dir", required=True, help="directory to set up, e.g. /srv/syncd")
    init.add_argument("--user", help="service user that owns the directories (default: syncd as root, else you)")
    init.add_argument("--group", help="writer group of the inbox (default: syncd-writers as root, else your group)")
    init.add_argument("--mode", help="inbox mode, octal (default 2770: the group writes, new files get the group)")
    init.add_argument("--state-dir", help="state directory (default DIR/state)")
    init.set_defaults(func=cmd_init)
    unit = add("systemd-unit", cmd_systemd_unit,
               "print the hardened systemd unit for this installation and configuration")
    unit.add_argument("--user", default="syncd", help="service user (default syncd)")
    unit.add_argument("--credentials-dir", default="/etc/syncd/credentials",
                      help="directory of the API key files loaded with LoadCredential= "
                           "(default /etc/syncd/credentials)")
    unit.add_argument("--sysusers", action="store_true",
                      help="print the sysusers.d file instead (user syncd, group syncd-writers); needs no --config")
    return parser


def main(argv: list[str] | None = None) -> int:
    _standard_fds()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ConfigError as exc:
        _say(f"syncd: configuration error:\n{exc}")
        return EXIT_CONFIG
    except LocalError as exc:
        _say(f"syncd: {exc}")
        return EXIT_LOCAL
    except JournalLost as exc:
        _say(f"syncd: {exc}")
        return EXIT_JOURNAL_LOST
    except KeyboardInterrupt:
        _say("syncd: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except sqlite3.DatabaseError as exc:  # the journal is the only database: damaged under us
        _say(f"syncd: the journal cannot be read ({exc}): syncd check says more")
        return EXIT_JOURNAL_LOST if type(exc) is sqlite3.DatabaseError else EXIT_LOCAL


def _standard_fds() -> None:
    """Open /dev/null on stdin, stdout or stderr when syncd was started with one closed
    (`syncd run <&- >&-`): otherwise the journal or the lock file would get that number, and
    anything written to it (by a library, in C) would land in the journal."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:  # a lower one was free too: it is opened in its own turn
                os.close(opened)


def _say(line: str) -> None:
    """A line on stderr, if there is one to write to (it may be closed, or a pipe nobody reads)."""
    try:
        print(line, file=sys.stderr)
    except (OSError, ValueError, AttributeError):
        pass


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader is gone, and Python's final flush of what is still
    buffered would otherwise print "Exception ignored ... BrokenPipeError" on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
