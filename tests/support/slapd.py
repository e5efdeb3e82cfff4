"""A throwaway, real OpenLDAP ``slapd`` for the test session.

Nothing here mocks LDAP: :class:`SlapdServer` writes a private ``cn=config``
(via ``slapadd -n0``), loads a small directory (via ``slapadd``), starts
``/usr/sbin/slapd`` in the foreground on a free loopback port and stops it again.
Everything lives under the directory it is given (config, data, pid file, log),
it listens only on ``ldap://127.0.0.1:<port>`` (no ``ldapi://``, no 389), so it
never touches a system slapd (``/etc/ldap/slapd.d``, ``/var/lib/ldap``,
``/run/slapd``). It works as root (CI) and as an ordinary user; no ``-u``/``-g``.

Requirements (Debian 12): ``apt-get install slapd ldap-utils``.  Overrides via
the environment, for other layouts: ``HANGAR_SLAPD`` / ``HANGAR_SLAPADD``
(binaries), ``HANGAR_SLAPD_MODULE_DIR`` (``back_mdb.so``/``ppolicy.so``),
``HANGAR_SLAPD_SCHEMA_DIR`` (``core.ldif`` ...), ``HANGAR_SLAPD_DEBUG`` (the
``-d`` level, e.g. ``stats``; output goes to ``<workdir>/slapd.log``).

Directory contents (see ``USERS``/``GROUPS``)::

    dc=hangar,dc=test
      ou=people    uid=alice (alice-pw)  uid=bob (bob-pw)
                   uid=carol (carol-pw, DISABLED)  uid=dave (dave-pw)
      ou=groups    cn=gpu-operators {alice, dave}  cn=gpu-viewers {bob}
                   cn=auditors {dave}                (groupOfNames / member)
      ou=services  cn=hangar-bind (bind-secret; may search everything but passwords)
      ou=policies  cn=default (pwdPolicy used by the ppolicy overlay)

Disabled accounts: the ``ppolicy`` overlay is enabled on the database and carol
carries ``pwdAccountLockedTime: 000001010000Z``, which OpenLDAP treats as
"locked until an administrator unlocks it" (slapd 2.5 honours it only when the
policy has ``pwdLockout: TRUE``; ``pwdMaxFailure: 0`` keeps wrong passwords from
locking anyone).  Her simple bind with the right
password fails with ``invalidCredentials`` (49), exactly as for a wrong
password, like a real directory with a locked account.  ``ACTIVE_USER_FILTER``
additionally hides locked accounts from the user search (defence in depth).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import ldap
import ldap.filter
import ldap.ldapobject

BASE_DN = "dc=hangar,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
SERVICES_DN = f"ou=services,{BASE_DN}"
POLICIES_DN = f"ou=policies,{BASE_DN}"
PPOLICY_DEFAULT_DN = f"cn=default,{POLICIES_DN}"

ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "admin-secret"  # only for the throwaway test server
BIND_DN = f"cn=hangar-bind,{SERVICES_DN}"
BIND_PASSWORD = "bind-secret"

#: Value OpenLDAP's ppolicy reads as "locked permanently (until an admin unlocks)".
LOCKED_FOREVER = "000001010000Z"

#: Search filters in django-auth-ldap syntax (``LDAPSearch(PEOPLE_DN, SCOPE_SUBTREE, ...)``).
#: ``USER_FILTER`` is enough: a locked account cannot bind, so it cannot log in.
USER_FILTER = "(&(objectClass=inetOrgPerson)(uid=%(user)s))"
#: Stricter variant: also hides ppolicy-locked accounts from the search itself.
ACTIVE_USER_FILTER = "(&(objectClass=inetOrgPerson)(uid=%(user)s)(!(pwdAccountLockedTime=*)))"
#: For ``LDAPSearch(GROUPS_DN, SCOPE_SUBTREE, GROUP_FILTER)`` + ``GroupOfNamesType()``.
GROUP_FILTER = "(objectClass=groupOfNames)"

#: groupOfNames requires at least one ``member``; when the last real member is
#: removed, this DN (no entry, matches no user) keeps the group schema-valid.
EMPTY_GROUP_PLACEHOLDER = f"cn=nobody,{BASE_DN}"


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a pytest test class

    uid: str
    password: str
    given_name: str
    surname: str
    uid_number: int
    disabled: bool = False

    @property
    def dn(self) -> str:
        return f"uid={self.uid},{PEOPLE_DN}"

    @property
    def email(self) -> str:
        return f"{self.uid}@hangar.test"

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.surname}"


USERS: dict[str, TestUser] = {
    u.uid: u
    for u in (
        TestUser("alice", "alice-pw", "Alice", "Anderson", 10001),
        TestUser("bob", "bob-pw", "Bob", "Brown", 10002),
        TestUser("carol", "carol-pw", "Carol", "Clark", 10003, disabled=True),
        TestUser("dave", "dave-pw", "Dave", "Davis", 10004),
    )
}

#: Initial memberships (group cn -> member uids).
GROUPS: dict[str, tuple[str, ...]] = {
    "gpu-operators": ("alice", "dave"),
    "gpu-viewers": ("bob",),
    "auditors": ("dave",),
}

SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


class SlapdError(RuntimeError):
    pass


def ssha(password: str) -> str:
    """``{SSHA}`` hash as slappasswd would produce it (slapadd stores values as given)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _find_binary(env: str, name: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    for candidate in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}", f"/usr/local/libexec/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if not found:
        raise SlapdError(f"{name} not found; install it with: apt-get install slapd ldap-utils")
    return found


def _find_dir(env: str, candidates: tuple[str, ...], marker: str) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env])
    for candidate in candidates:
        if (Path(candidate) / marker).exists():
            return Path(candidate)
    raise SlapdError(f"cannot find {marker} in {candidates}; set {env}")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM slapd if the test process dies without cleanup
    (e.g. pytest-timeout's thread method calling os._exit, or SIGKILL). Linux only.
    Note: it fires when the *thread* that started slapd exits, so start it from the
    main thread (the pytest fixture does)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ldif_value(attr: str, value: str) -> str:
    # Every value written here is ASCII without leading space/colon/<, so a plain
    # "attr: value" line is valid LDIF; refuse anything else instead of guessing.
    if not value.isascii() or "\n" in value or value[:1] in (" ", ":", "<"):
        raise ValueError(f"unsafe LDIF value for {attr}: {value!r}")
    return f"{attr}: {value}"


def _ldif_entry(dn: str, attrs: list[tuple[str, str]]) -> str:
    lines = [_ldif_value("dn", dn)] + [_ldif_value(a, v) for a, v in attrs]
    return "\n".join(lines) + "\n"


class SlapdServer:
    """One private slapd. ``start()``/``stop()`` or use as a context manager."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 15.0,
        debug_level: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.host = host
        self.start_timeout = start_timeout
        self.debug_level = debug_level or os.environ.get("HANGAR_SLAPD_DEBUG", "0")

        self.slapd_bin = _find_binary("HANGAR_SLAPD", "slapd")
        self.slapadd_bin = _find_binary("HANGAR_SLAPADD", "slapadd")
        self.module_dir = _find_dir(
            "HANGAR_SLAPD_MODULE_DIR",
            ("/usr/lib/ldap", "/usr/lib/x86_64-linux-gnu/ldap", "/usr/lib/openldap"),
            "back_mdb.la",
        )
        self.schema_dir = _find_dir(
            "HANGAR_SLAPD_SCHEMA_DIR", ("/etc/ldap/schema", "/etc/openldap/schema"), "core.ldif"
        )

        self.config_dir = self.workdir / "slapd.d"
        self.data_dir = self.workdir / "data"
        self.pid_file = self.workdir / "slapd.pid"
        self.args_file = self.workdir / "slapd.args"
        self.log_file = self.workdir / "slapd.log"

        self.base_dn = BASE_DN
        self.people_dn = PEOPLE_DN
        self.groups_dn = GROUPS_DN
        self.services_dn = SERVICES_DN
        self.bind_dn = BIND_DN
        self.bind_password = BIND_PASSWORD
        self.root_dn = ROOT_DN
        self.root_password = ROOT_PASSWORD
        self.user_filter = USER_FILTER
        self.active_user_filter = ACTIVE_USER_FILTER
        self.group_filter = GROUP_FILTER
        self.users = USERS
        self.groups = GROUPS

        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle = None

    # -- public API ---------------------------------------------------------------

    @property
    def uri(self) -> str:
        if self.port is None:
            raise SlapdError("slapd is not started")
        return f"ldap://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def user_dn(self, uid: str) -> str:
        return f"uid={uid},{self.people_dn}"

    def group_dn(self, cn: str) -> str:
        return f"cn={cn},{self.groups_dn}"

    def start(self) -> SlapdServer:
        if self._proc is not None:
            raise SlapdError("slapd already started")
        self._prepare()
        last_error = "no attempt"
        for _attempt in range(3):  # a freshly picked port can be stolen; pick again
            self.port = free_port(self.host)
            try:
                self._launch()
                return self
            except SlapdError as exc:
                last_error = str(exc)
                self.stop()
        raise SlapdError(f"slapd did not start: {last_error}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> SlapdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def hangar_env(self, *, active_filter: bool = False) -> dict[str, str]:
        """``HANGAR_LDAP_*`` variables (console/ldap.py) pointing the console at this server."""
        return {
            "HANGAR_LDAP_URI": self.uri,
            "HANGAR_LDAP_BIND_DN": self.bind_dn,
            "HANGAR_LDAP_BIND_PASSWORD": self.bind_password,
            "HANGAR_LDAP_USER_SEARCH": self.people_dn,
            "HANGAR_LDAP_USER_FILTER": ACTIVE_USER_FILTER if active_filter else USER_FILTER,
            "HANGAR_LDAP_GROUP_SEARCH": self.groups_dn,
            "HANGAR_LDAP_GROUP_TYPE": "groupOfNames",
            "HANGAR_LDAP_GROUP_FILTER": GROUP_FILTER,
        }

    def connect(
        self, bind_dn: str | None = None, password: str | None = None, *, timeout: float = 5.0
    ) -> ldap.ldapobject.LDAPObject:
        """A python-ldap connection, simple-bound as ``bind_dn`` (anonymous if None)."""
        conn = ldap.initialize(self.uri)
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, timeout)
        conn.set_option(ldap.OPT_TIMEOUT, timeout)
        try:
            conn.simple_bind_s(bind_dn or "", password or "")
        except Exception:
            conn.unbind_s()
            raise
        return conn

    def admin_connection(self) -> ldap.ldapobject.LDAPObject:
        return self.connect(self.root_dn, self.root_password)

    def service_connection(self) -> ldap.ldapobject.LDAPObject:
        return self.connect(self.bind_dn, self.bind_password)

    def groups_of(self, uid: str) -> set[str]:
        """Group cns that list ``uid`` as member, searched as the service account."""
        conn = self.service_connection()
        try:
            flt = f"(&{GROUP_FILTER}(member={ldap.filter.escape_filter_chars(self.user_dn(uid))}))"
            results = conn.search_s(self.groups_dn, ldap.SCOPE_SUBTREE, flt, ["cn"])
        finally:
            conn.unbind_s()
        return {attrs["cn"][0].decode() for dn, attrs in results if dn}

    def members_of(self, group: str) -> set[str]:
        """Member DNs of ``group`` (without the empty-group placeholder)."""
        return self._raw_members(group) - {EMPTY_GROUP_PLACEHOLDER}

    def remove_user_from_group(self, uid: str, group: str) -> None:
        """Remove ``uid`` from ``group`` (as rootdn). No-op if not a member."""
        user_dn = self.user_dn(uid)
        members = self.members_of(group)
        if user_dn not in members:
            return
        mods = [(ldap.MOD_DELETE, "member", [user_dn.encode()])]
        if members == {user_dn}:  # groupOfNames must keep one member value
            mods.insert(0, (ldap.MOD_ADD, "member", [EMPTY_GROUP_PLACEHOLDER.encode()]))
        self._modify(self.group_dn(group), mods)

    def add_user_to_group(self, uid: str, group: str) -> None:
        """Add ``uid`` to ``group`` (as rootdn). No-op if already a member."""
        user_dn = self.user_dn(uid)
        current = self._raw_members(group)
        if user_dn in current:
            return
        mods = [(ldap.MOD_ADD, "member", [user_dn.encode()])]
        if EMPTY_GROUP_PLACEHOLDER in current:
            mods.append((ldap.MOD_DELETE, "member", [EMPTY_GROUP_PLACEHOLDER.encode()]))
        self._modify(self.group_dn(group), mods)

    def disable_user(self, uid: str) -> None:
        """Lock the account via ppolicy (its binds then fail with invalidCredentials)."""
        self._modify(
            self.user_dn(uid),
            [(ldap.MOD_REPLACE, "pwdAccountLockedTime", [LOCKED_FOREVER.encode()])],
        )

    def enable_user(self, uid: str) -> None:
        with contextlib.suppress(ldap.NO_SUCH_ATTRIBUTE):
            self._modify(self.user_dn(uid), [(ldap.MOD_DELETE, "pwdAccountLockedTime", None)])

    def reset(self) -> None:
        """Restore the initial group memberships and account states."""
        for group, uids in GROUPS.items():
            members = [self.user_dn(u).encode() for u in uids]
            self._modify(self.group_dn(group), [(ldap.MOD_REPLACE, "member", members)])
        for user in USERS.values():
            if user.disabled:
                self.disable_user(user.uid)
            else:
                self.enable_user(user.uid)

    # -- internals --------------------------------------------------------------------

    def _raw_members(self, group: str) -> set[str]:
        conn = self.admin_connection()
        try:
            [(_dn, attrs)] = conn.search_s(
                self.group_dn(group), ldap.SCOPE_BASE, attrlist=["member"]
            )
        finally:
            conn.unbind_s()
        return {m.decode() for m in attrs.get("member", [])}

    def _modify(self, dn: str, mods: list) -> None:
        conn = self.admin_connection()
        try:
            conn.modify_s(dn, mods)
        finally:
            conn.unbind_s()

    def _prepare(self) -> None:
        if self.config_dir.exists() or self.data_dir.exists():
            raise SlapdError(f"{self.workdir} already holds a slapd; use a fresh directory")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(mode=0o700)
        self.data_dir.mkdir(mode=0o700)
        config_ldif = self.workdir / "config.ldif"
        data_ldif = self.workdir / "data.ldif"
        config_ldif.write_text(self._config_ldif())
        data_ldif.write_text(self._data_ldif())
        self._run([self.slapadd_bin, "-n0", "-F", str(self.config_dir), "-l", str(config_ldif)])
        self._run(
            [self.slapadd_bin, "-F", str(self.config_dir), "-b", BASE_DN, "-l", str(data_ldif)]
        )

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise SlapdError(
                f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}"
                f"\n{result.stdout.strip()}"
            )

    def _launch(self) -> None:
        if self._log_handle is None:
            self._log_handle = open(self.log_file, "ab")  # noqa: SIM115 (closed in stop())
        argv = [
            self.slapd_bin,
            "-F",
            str(self.config_dir),
            "-h",
            self.uri + "/",
            "-d",
            self.debug_level,
        ]
        self._log_handle.write(f"\n=== {' '.join(argv)}\n".encode())
        self._log_handle.flush()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            close_fds=True,
            preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SlapdError(
                    f"slapd exited with {self._proc.returncode}; log:\n{self._log_tail()}"
                )
            try:
                self.connect(self.root_dn, self.root_password, timeout=1.0).unbind_s()
                return
            except ldap.LDAPError as exc:
                last = exc
                time.sleep(0.05)
        raise SlapdError(
            f"slapd on {self.uri} not answering after {self.start_timeout}s ({last!r}); "
            f"log:\n{self._log_tail()}"
        )

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def _config_ldif(self) -> str:
        w = str(self.workdir)
        parts = [
            _ldif_entry(
                "cn=config",
                [
                    ("objectClass", "olcGlobal"),
                    ("cn", "config"),
                    ("olcPidFile", f"{w}/slapd.pid"),
                    ("olcArgsFile", f"{w}/slapd.args"),
                    ("olcLogLevel", "none"),
                ],
            ),
            _ldif_entry(
                "cn=module{0},cn=config",
                [
                    ("objectClass", "olcModuleList"),
                    ("cn", "module{0}"),
                    ("olcModulePath", str(self.module_dir)),
                    ("olcModuleLoad", "back_mdb"),
                    ("olcModuleLoad", "ppolicy"),
                ],
            ),
            _ldif_entry(
                "cn=schema,cn=config", [("objectClass", "olcSchemaConfig"), ("cn", "schema")]
            ),
        ]
        for name in SCHEMAS:
            text = (self.schema_dir / f"{name}.ldif").read_text()
            parts.append("\n".join(ln for ln in text.splitlines() if not ln.startswith("#")) + "\n")
        parts += [
            _ldif_entry(
                "olcDatabase={-1}frontend,cn=config",
                [
                    ("objectClass", "olcDatabaseConfig"),
                    ("objectClass", "olcFrontendConfig"),
                    ("olcDatabase", "{-1}frontend"),
                    ("olcSizeLimit", "500"),
                ],
            ),
            _ldif_entry(
                "olcDatabase={0}config,cn=config",
                [
                    ("objectClass", "olcDatabaseConfig"),
                    ("olcDatabase", "{0}config"),
                    ("olcAccess", "{0}to * by * none"),
                ],
            ),
            _ldif_entry(
                "olcDatabase={1}mdb,cn=config",
                [
                    ("objectClass", "olcDatabaseConfig"),
                    ("objectClass", "olcMdbConfig"),
                    ("olcDatabase", "{1}mdb"),
                    ("olcDbDirectory", str(self.data_dir)),
                    ("olcSuffix", BASE_DN),
                    ("olcRootDN", ROOT_DN),
                    ("olcRootPW", ssha(ROOT_PASSWORD)),
                    ("olcDbMaxSize", str(64 * 1024 * 1024)),
                    ("olcDbIndex", "objectClass eq"),
                    ("olcDbIndex", "uid,member eq"),
                    # Passwords: only usable for bind (and by the owner to change it).
                    (
                        "olcAccess",
                        "{0}to attrs=userPassword by self write by anonymous auth by * none",
                    ),
                    # Everything else: readable by the service account and by any
                    # authenticated user (django-auth-ldap may search as the user);
                    # anonymous clients see nothing.
                    ("olcAccess", f'{{1}}to * by dn.exact="{BIND_DN}" read by users read'),
                ],
            ),
            _ldif_entry(
                "olcOverlay={0}ppolicy,olcDatabase={1}mdb,cn=config",
                [
                    ("objectClass", "olcOverlayConfig"),
                    ("objectClass", "olcPPolicyConfig"),
                    ("olcOverlay", "{0}ppolicy"),
                    ("olcPPolicyDefault", PPOLICY_DEFAULT_DN),
                    ("olcPPolicyHashCleartext", "FALSE"),
                    # FALSE: a locked account gets plain invalidCredentials, nothing more.
                    ("olcPPolicyUseLockout", "FALSE"),
                ],
            ),
        ]
        return "\n".join(parts)

    def _data_ldif(self) -> str:
        entries = [
            _ldif_entry(
                BASE_DN,
                [
                    ("objectClass", "dcObject"),
                    ("objectClass", "organization"),
                    ("dc", "hangar"),
                    ("o", "Hangar test directory"),
                ],
            )
        ]
        for dn, ou in (
            (PEOPLE_DN, "people"),
            (GROUPS_DN, "groups"),
            (SERVICES_DN, "services"),
            (POLICIES_DN, "policies"),
        ):
            entries.append(_ldif_entry(dn, [("objectClass", "organizationalUnit"), ("ou", ou)]))
        entries.append(
            _ldif_entry(
                PPOLICY_DEFAULT_DN,
                [
                    ("objectClass", "device"),
                    ("objectClass", "pwdPolicy"),
                    ("cn", "default"),
                    ("pwdAttribute", "userPassword"),
                    # ppolicy 2.5 only honours pwdAccountLockedTime when pwdLockout is
                    # TRUE; pwdMaxFailure 0 keeps wrong passwords from ever locking.
                    ("pwdLockout", "TRUE"),
                    ("pwdMaxFailure", "0"),
                    ("pwdAllowUserChange", "TRUE"),
                ],
            )
        )
        entries.append(
            _ldif_entry(
                BIND_DN,
                [
                    ("objectClass", "applicationProcess"),
                    ("objectClass", "simpleSecurityObject"),
                    ("cn", "hangar-bind"),
                    ("description", "Hangar console search account"),
                    ("userPassword", ssha(BIND_PASSWORD)),
                ],
            )
        )
        for user in USERS.values():
            attrs = [
                ("objectClass", "inetOrgPerson"),
                ("objectClass", "posixAccount"),
                ("uid", user.uid),
                ("cn", user.full_name),
                ("givenName", user.given_name),
                ("sn", user.surname),
                ("displayName", user.full_name),
                ("mail", user.email),
                ("uidNumber", str(user.uid_number)),
                ("gidNumber", str(user.uid_number)),
                ("homeDirectory", f"/home/{user.uid}"),
                ("loginShell", "/bin/bash"),
                ("userPassword", ssha(user.password)),
            ]
            if user.disabled:
                attrs.append(("pwdAccountLockedTime", LOCKED_FOREVER))
            entries.append(_ldif_entry(user.dn, attrs))
        for group, uids in GROUPS.items():
            attrs = [("objectClass", "groupOfNames"), ("cn", group)]
            attrs += [("member", USERS[u].dn) for u in uids]
            entries.append(_ldif_entry(f"cn={group},{GROUPS_DN}", attrs))
        return "\n".join(entries)
