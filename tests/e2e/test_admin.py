"""The admin API (`/admin/*` of `metahub serve --admin-secret-file`) and the CLI against it (`--endpoint`): every
operation, its validation errors, its refusals of pull tokens and wrong secrets, and the audit log it keeps. Each test
runs on both stores (file, DynamoDB on moto)."""

from __future__ import annotations

import json
import os

import pytest
import requests
from argon2 import PasswordHasher  # argon2-cffi (tests/install.sh): the CLI tests send client-side hashes too

from conftest import (
    ADMIN_SECRET,
    MACHINE_TYPES,
    METAHUB_BIN,
    ConfiguredMetahub,
    assert_registry_error,
    creds,
    get_token,
    run,
)
from test_pull import EXPECTED_AMD64

AUTH = {"Authorization": f"Bearer {ADMIN_SECRET}"}


def admin(hub: ConfiguredMetahub, method: str, path: str, body=None, raw: bytes | None = None, headers: dict | None = None) -> requests.Response:
    kw = {"json": body} if body is not None else {"data": raw}
    return requests.request(method, f"{hub.url}/admin/{path}", headers=AUTH if headers is None else headers, timeout=30, **kw)


def cli(hub: ConfiguredMetahub, *args: str, input: bytes | None = None, check: bool = True, secret: str | None = ADMIN_SECRET):
    """`metahub ARGS --endpoint URL` with the admin secret in the environment (and no usable store)."""
    env = {"METAHUB_STORE": "file:/nonexistent/never-opened.redb", "RUST_LOG": "warn"}
    env["METAHUB_ADMIN_SECRET"] = secret or ""
    return run([METAHUB_BIN, *args, "--endpoint", hub.url], input=input, env=env, check=check)


def token_status(hub: ConfiguredMetahub, login: str, password: str) -> int:
    return requests.get(f"{hub.url}/token", params={"service": "metahub", "scope": "repository:org/app:pull"}, auth=(login, password), timeout=30).status_code


def changes(hub: ConfiguredMetahub, limit: int = 1000) -> list[dict]:
    r = admin(hub, "GET", f"changes?limit={limit}")
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------------------------------
# authentication


def test_refuses_missing_wrong_and_pull_credentials(admin_metahub):
    hub = admin_metahub
    login, password = creds("skylake")
    pull_token = get_token(hub, "skylake")
    refused = {
        "none": {},
        "wrong secret": {"Authorization": "Bearer " + "x" * len(ADMIN_SECRET)},
        "secret with a suffix": {"Authorization": f"Bearer {ADMIN_SECRET}x"},
        "pull token": {"Authorization": f"Bearer {pull_token}"},
        "pull login (basic)": {"Authorization": requests.auth._basic_auth_str(login, password)},
        "secret as basic": {"Authorization": requests.auth._basic_auth_str("admin", ADMIN_SECRET)},
        "forged jwt": {"Authorization": "Bearer " + pull_token.rsplit(".", 1)[0] + ".AAAA"},
    }
    for what, headers in refused.items():
        for method, path, body in [("GET", "machine-types", None), ("PUT", "machine-types/evil", {"features": []}), ("GET", "changes", None)]:
            r = admin(hub, method, path, body, headers=headers)
            err = assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
            assert "admin" in err["message"], (what, err)
    assert admin(hub, "GET", "machine-types/evil").status_code == 404
    assert not any(c["target"].startswith("evil") for c in changes(hub))


def test_cli_refuses_without_or_with_a_wrong_secret(admin_metahub):
    p = cli(admin_metahub, "machine-type", "list", secret=None, check=False)
    assert p.returncode != 0 and b"METAHUB_ADMIN_SECRET" in p.stderr, p.stderr
    p = cli(admin_metahub, "machine-type", "list", secret="y" * 40, check=False)
    assert p.returncode != 0 and b"UNAUTHORIZED" in p.stderr, p.stderr


def test_no_admin_routes_without_a_secret(metahub_file):
    r = requests.get(f"{metahub_file.url}/admin/machine-types", headers=AUTH, timeout=10)
    assert_registry_error(r.status_code, r.content, 404, {"NOT_FOUND"})


def test_serve_refuses_a_short_secret(workdir, upstream):
    d = workdir / "short-admin-secret"
    d.mkdir()
    (d / "secret").write_text("too-short\n")
    (d / "secret").chmod(0o600)
    p = run([METAHUB_BIN, "serve", "--listen", "127.0.0.1:1", "--upstream", upstream.url, "--store", f"file:{d / 'store.redb'}",
             "--admin-secret-file", str(d / "secret")], check=False, timeout=30)
    assert p.returncode != 0 and b"at least 32" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# machine types


def test_machine_type_crud(admin_metahub):
    hub = admin_metahub
    r = admin(hub, "PUT", "machine-types/adm-hsw", {"features": ["cpu:haswell", "nvcap:5.2"], "match": "exact"})
    assert r.status_code == 200, r.text
    expected = {"name": "adm-hsw", "features": ["cpu:haswell", "nvcap:5.2"], "match": "exact"}
    assert r.json() == expected
    assert admin(hub, "GET", "machine-types/adm-hsw").json() == expected
    listed = admin(hub, "GET", "machine-types").json()
    assert expected in listed
    assert {m["name"] for m in listed} >= set(MACHINE_TYPES)
    # replace; `match` defaults to best
    r = admin(hub, "PUT", "machine-types/adm-hsw", {"features": ["cpu:haswell"]})
    assert r.json() == {"name": "adm-hsw", "features": ["cpu:haswell"], "match": "best"}
    assert admin(hub, "DELETE", "machine-types/adm-hsw").status_code == 204
    r = admin(hub, "GET", "machine-types/adm-hsw")
    assert_registry_error(r.status_code, r.content, 404, {"NAME_UNKNOWN"})
    r = admin(hub, "DELETE", "machine-types/adm-hsw")
    assert_registry_error(r.status_code, r.content, 404, {"NAME_UNKNOWN"})
    r = admin(hub, "POST", "machine-types/adm-hsw", {"features": []})
    assert_registry_error(r.status_code, r.content, 405, {"UNSUPPORTED"})


@pytest.mark.parametrize(
    "body, code, needle",
    [
        ({"features": ["cpu:skylak"]}, "INVALID", "skylake"),
        ({"features": ["cpu:cascadelak"]}, "INVALID", "cascadelake"),
        ({"features": ["nvcap:7"]}, "INVALID", "nvcap"),
        ({"features": ["nvcap:seven.0"]}, "INVALID", "nvcap"),
        ({"features": ["cuda:12"]}, "INVALID", "cuda:12.4"),
        ({"features": ["driver:535.x"]}, "INVALID", "driver:535.129.03"),
        ({"features": ["cuda:12.4", "cuda:12.2"]}, "INVALID", "at most one cuda:"),
        ({"features": ["cpu:zen2", "cpu:zen2"]}, "INVALID", "twice"),
        ({"features": ["cpu:zen2", "cpu:zen3"]}, "INVALID", "at most one cpu"),
        ({"features": ["fabric efa"]}, "INVALID", "key:value"),
        ({"features": "cpu:zen2"}, "INVALID", "invalid type"),
        ({"features": [7]}, "INVALID", "invalid type"),
        ({"features": [], "match": "closest"}, "INVALID", "closest"),
        ({"features": [], "match": 1}, "INVALID", "invalid type"),
        ({"match": "best"}, "INVALID", "features"),
        ({"features": [], "colour": "red"}, "INVALID", "unknown field"),
        ({"name": "other", "features": []}, "INVALID", "path names"),
        ([], "INVALID", "JSON object"),
    ],
)
def test_machine_type_validation(admin_metahub, body, code, needle):
    r = admin(admin_metahub, "PUT", "machine-types/adm-bad", body)
    err = assert_registry_error(r.status_code, r.content, 400, {code})
    assert needle in err["message"], err
    assert admin(admin_metahub, "GET", "machine-types/adm-bad").status_code == 404


def test_unknown_cpu_suggests_archspec_names(admin_metahub):
    r = admin(admin_metahub, "PUT", "machine-types/adm-bad", {"features": ["cpu:skylake_avx"]})
    err = assert_registry_error(r.status_code, r.content, 400)
    assert err["detail"]["feature"] == "cpu:skylake_avx"
    assert "skylake_avx512" in err["detail"]["suggestions"], err
    assert "skylake_avx512" in err["message"]


def test_driver_features_are_accepted_and_brands_suggested(admin_metahub):
    features = ["cpu:icelake", "nvcap:8.0", "cuda:12.2", "driver:535.183.01", "gpu-brand:tesla"]
    r = admin(admin_metahub, "PUT", "machine-types/adm-gpu", {"features": features})
    assert r.status_code == 200, r.text
    assert admin(admin_metahub, "GET", "machine-types/adm-gpu").json()["features"] == features
    assert admin(admin_metahub, "DELETE", "machine-types/adm-gpu").status_code == 204
    r = admin(admin_metahub, "PUT", "machine-types/adm-bad", {"features": ["gpu-brand:telsa"]})
    err = assert_registry_error(r.status_code, r.content, 400, {"INVALID"})
    assert err["detail"] == {"feature": "gpu-brand:telsa", "suggestions": err["detail"]["suggestions"]}
    assert err["detail"]["suggestions"][0] == "tesla", err


@pytest.mark.parametrize("raw", [b"{not json", b"", b"null", b'{"features": ["cpu:zen2"]', b"\xff\xfe"])
def test_malformed_bodies(admin_metahub, raw):
    r = admin(admin_metahub, "PUT", "machine-types/adm-bad", raw=raw, headers={**AUTH, "Content-Type": "application/json"})
    err = assert_registry_error(r.status_code, r.content, 400, {"INVALID"})
    assert err["message"].startswith("request body"), err


def test_bad_names(admin_metahub):
    for path in ["machine-types/bad%20name", "machine-types/" + "a" * 65, "accounts/bad%2Fname"]:
        r = admin(admin_metahub, "PUT", path, {"features": []} if "machine" in path else {"machineType": "skylake", "password": "long enough"})
        assert_registry_error(r.status_code, r.content, {400, 404}, {"NAME_INVALID", "NOT_FOUND"})


# ---------------------------------------------------------------------------------------------
# accounts


def test_account_crud_and_rotation(admin_metahub):
    hub = admin_metahub
    r = admin(hub, "PUT", "accounts/adm-user", {"machineType": "skylake", "password": "first-password"})
    assert r.status_code == 200, r.text
    assert r.json() == {"login": "adm-user", "machineType": "skylake"}
    assert token_status(hub, "adm-user", "first-password") == 200
    listed = admin(hub, "GET", "accounts").json()
    assert {"login": "adm-user", "machineType": "skylake"} in listed
    assert all(set(a) == {"login", "machineType"} for a in listed), listed
    assert "argon2" not in admin(hub, "GET", "accounts").text
    assert admin(hub, "GET", "accounts/adm-user").json() == {"login": "adm-user", "machineType": "skylake"}

    r = admin(hub, "PUT", "accounts/adm-user/password", {"password": "second-password"})
    assert r.status_code == 200, r.text
    assert token_status(hub, "adm-user", "first-password") == 401
    assert token_status(hub, "adm-user", "second-password") == 200

    # move it to another machine type: its next token says so
    r = admin(hub, "PUT", "accounts/adm-user", {"machineType": "zen2", "password": "third-password"})
    assert r.json()["machineType"] == "zen2"
    assert token_status(hub, "adm-user", "third-password") == 200

    assert admin(hub, "DELETE", "accounts/adm-user").status_code == 204
    assert token_status(hub, "adm-user", "third-password") == 401
    r = admin(hub, "DELETE", "accounts/adm-user")
    assert_registry_error(r.status_code, r.content, 404, {"NAME_UNKNOWN"})
    r = admin(hub, "PUT", "accounts/adm-user/password", {"password": "fourth-password"})
    assert_registry_error(r.status_code, r.content, 404, {"NAME_UNKNOWN"})


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"machineType": "skylake", "password": "short"}, 400, "password"),
        ({"machineType": "skylake"}, 400, "password"),
        ({"machineType": "skylake", "password": "long enough", "passwordHash": "$argon2id$x"}, 400, "not both"),
        ({"machineType": "skylake", "passwordHash": "$2b$12$abcdefghijklmnopqrstuuMZ0pYxXhP7qWq0jYVSGNcVRkKPvA.8q"}, 400, "passwordHash"),
        ({"machineType": "skylake", "passwordHash": "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"}, 400, "argon2id"),
        ({"machineType": "skylake", "passwordHash": "plain text"}, 400, "passwordHash"),
        ({"machineType": 5, "password": "long enough"}, 400, "invalid type"),
        ({"machineType": "no-such-type", "password": "long enough"}, 404, "no-such-type"),
        ({"machineType": "skylake", "password": "long enough", "admin": True}, 400, "unknown field"),
    ],
)
def test_account_validation(admin_metahub, body, status, needle):
    r = admin(admin_metahub, "PUT", "accounts/adm-bad", body)
    err = assert_registry_error(r.status_code, r.content, status)
    assert needle in err["message"], err
    assert admin(admin_metahub, "GET", "accounts/adm-bad").status_code == 404


def test_account_with_a_client_side_hash(admin_metahub):
    hub = admin_metahub
    phc = PasswordHasher().hash("hashed-elsewhere")
    r = admin(hub, "PUT", "accounts/adm-hash", {"machineType": "zen2", "passwordHash": phc})
    assert r.status_code == 200, r.text
    assert token_status(hub, "adm-hash", "hashed-elsewhere") == 200
    admin(hub, "DELETE", "accounts/adm-hash")


def test_delete_in_use_is_refused_naming_the_accounts(admin_metahub):
    hub = admin_metahub
    admin(hub, "PUT", "machine-types/adm-used", {"features": ["cpu:zen3"]})
    for login in ["adm-u1", "adm-u2"]:
        assert admin(hub, "PUT", f"accounts/{login}", {"machineType": "adm-used", "password": "long enough"}).status_code == 200
    r = admin(hub, "DELETE", "machine-types/adm-used")
    err = assert_registry_error(r.status_code, r.content, 403, {"DENIED"})
    assert "adm-u1" in err["message"] and "adm-u2" in err["message"], err
    p = cli(hub, "machine-type", "delete", "adm-used", check=False)
    assert p.returncode != 0 and b"DENIED" in p.stderr and b"adm-u1" in p.stderr, p.stderr
    for login in ["adm-u1", "adm-u2"]:
        admin(hub, "DELETE", f"accounts/{login}")
    assert admin(hub, "DELETE", "machine-types/adm-used").status_code == 204


# ---------------------------------------------------------------------------------------------
# explain and the audit log


@pytest.mark.parametrize("machine_type", sorted(MACHINE_TYPES))
def test_explain_route(admin_metahub, images, machine_type):
    r = admin(admin_metahub, "GET", f"explain?machineType={machine_type}&image=org/app:latest")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["index"] is True and doc["digest"] == images.tags["org/app"][2]
    served = [images.variant_of_digest(e["digest"]) for e in doc["entries"] if e["served"] and e["architecture"] == "amd64"]
    assert served == [EXPECTED_AMD64[machine_type]]
    assert all(e["reason"] for e in doc["entries"])


def test_explain_route_errors(admin_metahub):
    r = admin(admin_metahub, "GET", "explain?machineType=nope&image=org/app:latest")
    assert_registry_error(r.status_code, r.content, 404, {"NAME_UNKNOWN"})
    r = admin(admin_metahub, "GET", "explain?machineType=skylake")
    assert_registry_error(r.status_code, r.content, 400)
    r = admin(admin_metahub, "GET", "explain?machineType=skylake&image=org/absent:latest")
    assert_registry_error(r.status_code, r.content, 404)


def test_every_change_is_recorded(admin_metahub):
    hub = admin_metahub
    admin(hub, "PUT", "machine-types/adm-audit", {"features": ["fabric:efa"]})
    admin(hub, "PUT", "accounts/adm-audit", {"machineType": "adm-audit", "password": "secret-password"})
    admin(hub, "PUT", "accounts/adm-audit/password", {"password": "other-password"})
    admin(hub, "DELETE", "accounts/adm-audit")
    admin(hub, "DELETE", "machine-types/adm-audit")
    mine = [c for c in changes(hub) if c["target"].startswith("adm-audit")]
    assert [(c["action"], c["target"]) for c in mine] == [
        ("delete-machine-type", "adm-audit"),
        ("delete-account", "adm-audit"),
        ("rotate-password", "adm-audit"),
        ("put-account", "adm-audit machineType=adm-audit"),
        ("put-machine-type", "adm-audit [fabric:efa] best"),
    ]
    for c in mine:
        assert c["who"] == "admin-secret" and c["at"] > 1_600_000_000 and c["time"].endswith("Z"), c
    log = json.dumps(changes(hub))
    assert "secret-password" not in log and "argon2" not in log
    assert len(changes(hub, 2)) == 2
    for bad in ["0", "-1", "x", "100000"]:
        r = admin(hub, "GET", f"changes?limit={bad}")
        assert_registry_error(r.status_code, r.content, 400)
    # the CLI on the store records its changes too, as cli:<user>; both read the same log
    hub.put_machine_type("adm-local", ["cpu:zen"])
    newest = changes(hub, 1)[0]
    assert (newest["action"], newest["who"]) == ("put-machine-type", f"cli:{os.environ.get('USER', 'unknown')}"), newest
    via_store = json.loads(hub.cli("changes", "--json", "--limit", "3").stdout)
    assert via_store == changes(hub, 3)


# ---------------------------------------------------------------------------------------------
# the CLI against the admin API


def test_cli_machine_types(admin_metahub):
    hub = admin_metahub
    out = cli(hub, "machine-type", "put", "adm-cli", "--feature", "cpu:icelake", "--feature", "nvcap:8.0", "--match", "exact").stdout.decode()
    assert "adm-cli" in out
    expected = {"name": "adm-cli", "features": ["cpu:icelake", "nvcap:8.0"], "match": "exact"}
    assert json.loads(cli(hub, "machine-type", "get", "adm-cli", "--json").stdout) == expected
    assert admin(hub, "GET", "machine-types/adm-cli").json() == expected
    assert expected in json.loads(cli(hub, "machine-type", "list", "--json").stdout)
    table = cli(hub, "machine-type", "list").stdout.decode().splitlines()
    assert table[0].split() == ["NAME", "MATCH", "FEATURES"]
    assert any(line.split() == ["adm-cli", "exact", "cpu:icelake", "nvcap:8.0"] for line in table), table
    p = cli(hub, "machine-type", "put", "adm-cli", "--feature", "cpu:icelak", check=False)
    assert p.returncode != 0 and b"icelake" in p.stderr, p.stderr
    cli(hub, "machine-type", "delete", "adm-cli")
    p = cli(hub, "machine-type", "get", "adm-cli", check=False)
    assert p.returncode != 0 and b"no machine type" in p.stderr
    p = cli(hub, "machine-type", "delete", "adm-cli", check=False)
    assert p.returncode != 0 and b"no machine type" in p.stderr


def test_cli_accounts(admin_metahub):
    hub = admin_metahub
    cli(hub, "account", "put", "adm-cli-user", "--machine-type", "graviton", "--password-stdin", input=b"cli-password-1\n")
    assert token_status(hub, "adm-cli-user", "cli-password-1") == 200
    listed = json.loads(cli(hub, "account", "list", "--json").stdout)
    assert {"login": "adm-cli-user", "machineType": "graviton"} in listed
    table = cli(hub, "account", "list").stdout.decode().splitlines()
    assert table[0].split() == ["LOGIN", "MACHINE", "TYPE", "REPOSITORIES"]
    assert ["adm-cli-user", "graviton", "*"] in [l.split() for l in table]
    cli(hub, "account", "rotate-password", "adm-cli-user", "--password-stdin", input=b"cli-password-2\n")
    assert token_status(hub, "adm-cli-user", "cli-password-1") == 401
    assert token_status(hub, "adm-cli-user", "cli-password-2") == 200
    p = cli(hub, "account", "rotate-password", "adm-nobody", "--password-stdin", input=b"cli-password-3\n", check=False)
    assert p.returncode != 0 and b"adm-nobody" in p.stderr, p.stderr
    p = cli(hub, "account", "put", "adm-cli-user", "--machine-type", "no-such-type", "--password-stdin", input=b"cli-password-3\n", check=False)
    assert p.returncode != 0 and b"no-such-type" in p.stderr, p.stderr
    cli(hub, "account", "delete", "adm-cli-user")
    assert token_status(hub, "adm-cli-user", "cli-password-2") == 401
    p = cli(hub, "account", "delete", "adm-cli-user", check=False)
    assert p.returncode != 0 and b"no account" in p.stderr

    recorded = json.loads(cli(hub, "changes", "--json", "--limit", "5").stdout)
    assert [(c["action"], c["target"]) for c in recorded[:3]] == [
        ("delete-account", "adm-cli-user"),
        ("rotate-password", "adm-cli-user"),
        ("put-account", "adm-cli-user machineType=graviton"),
    ]
    assert all(c["who"] == "admin-secret" for c in recorded[:3])
    table = cli(hub, "changes", "--limit", "3").stdout.decode().splitlines()
    assert table[0].split() == ["TIME", "WHO", "ACTION", "TARGET"] and len(table) == 4
    assert "delete-account" in table[1]
