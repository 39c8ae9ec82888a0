// MetaHub's admin page. Every value reaches the page through textContent or setAttribute (never HTML built from
// data): image names, features and logins are user input. Writes carry the session's CSRF token.
"use strict";

const state = { csrf: "", machineTypes: [], accounts: [], editing: null };

const $ = (id) => document.getElementById(id);

// el("td", {class: "x", onclick: f, dataset: {image: "…"}}, "text", childNode, …): a DOM node built safely.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replace(container, ...children) {
  container.replaceChildren(...children.flat());
}

function flash(message, kind) {
  const box = $("flash");
  box.textContent = message;
  box.className = kind || "error";
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = error && error.code;
    this.detail = error && error.detail;
  }
}

// One admin API call: the JSON answer, or an ApiError from the registry error envelope.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-MetaHub-CSRF"] = state.csrf || "-";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) {
    const first = json && Array.isArray(json.errors) ? json.errors[0] : null;
    if (response.status === 401 && path !== "/admin/session") showSignIn();
    throw new ApiError(response.status, first);
  }
  return json;
}

function explainError(e) {
  let message = e.message;
  if (e.detail && Array.isArray(e.detail.suggestions) && e.detail.suggestions.length) {
    message += ` (did you mean ${e.detail.suggestions.join(", ")}?)`;
  }
  return message;
}

// Runs an action, shows what went wrong, and reports success.
async function attempt(action, success) {
  try {
    await action();
    if (success) flash(success, "info");
    return true;
  } catch (e) {
    flash(explainError(e), "error");
    return false;
  }
}

const enc = encodeURIComponent;

// ---- sign-in and tabs ----

function showSignIn() {
  $("sign-in").hidden = false;
  $("tabs").hidden = true;
  $("sign-out").hidden = true;
  for (const tab of document.querySelectorAll("section.tab")) tab.hidden = true;
}

async function signedIn(session) {
  state.csrf = session.csrf || "";
  $("sign-in").hidden = true;
  $("tabs").hidden = false;
  $("sign-out").hidden = session.via !== "cookie";
  $("who").textContent = session.principal ? `signed as ${session.principal}` : "";
  await showTab(location.hash.replace("#", "") || "matrix");
}

async function showTab(name) {
  if (!["matrix", "machine-types", "accounts", "changes"].includes(name)) name = "matrix";
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const tab of document.querySelectorAll("section.tab")) tab.hidden = tab.id !== name;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  await attempt(async () => {
    if (name === "matrix") await loadMatrix();
    if (name === "machine-types") await loadMachineTypes();
    if (name === "accounts") await loadAccounts();
    if (name === "changes") await loadChanges();
  });
}

// ---- the matrix ----

function shortDigest(digest) {
  return digest ? String(digest).replace(/^sha256:/, "").slice(0, 12) : "";
}

function tags(values) {
  return (values || []).map((v) => el("span", { class: "tag" }, v));
}

// The entries a pull of this image is served, without the attestations that ride along.
function servedEntries(cell) {
  return (cell.entries || []).filter((e) => e.served && !e.attests);
}

function cellContent(cell) {
  if (cell.fault) return { cls: "fault", nodes: [el("span", {}, `${cell.fault.code}: ${cell.fault.message}`)] };
  if (cell.passthrough) return { cls: "fits", nodes: [el("span", {}, "single manifest: served as is")] };
  if (cell.error) return { cls: "nofit", nodes: [el("strong", {}, "no build fits")] };
  const nodes = servedEntries(cell).map((e) =>
    el("div", { class: "entry" },
      el("div", { class: "platform" }, e.platform),
      el("div", {}, tags(e.features)),
      el("div", { class: "digest", title: e.digest }, shortDigest(e.digest))));
  return { cls: "fits", nodes };
}

async function loadMatrix() {
  const matrix = await api("GET", "/admin/matrix");
  const types = matrix.machineTypes;
  const container = $("matrix-table");
  if (!matrix.images.length) {
    replace(container, el("p", { class: "empty" }, "No watched images yet: add one above."));
    return;
  }
  if (!types.length) {
    replace(container, el("p", { class: "empty" }, "No machine types yet: create one in the Machine types tab."));
  }
  const head = el("tr", {}, el("th", {}, "Image"),
    types.map((t) => el("th", { dataset: { machineType: t.name } }, el("div", {}, t.name), el("div", {}, tags(t.features)))));
  const rows = matrix.images.map((row) => {
    const imageCell = el("th", { scope: "row" },
      el("div", {}, row.image),
      el("div", { class: "digest mono", title: row.digest || "" }, shortDigest(row.digest)),
      el("button", { type: "button", class: "danger", onclick: () => unwatch(row.image) }, "Unwatch"));
    if (row.fault) {
      return el("tr", {}, imageCell,
        el("td", { class: "fault", colspan: Math.max(types.length, 1) }, `${row.fault.code}: ${row.fault.message}`));
    }
    return el("tr", {}, imageCell, row.cells.map((cell, i) => {
      const { cls, nodes } = cellContent(cell);
      return el("td", {
        class: `cell ${cls}`,
        tabindex: "0",
        dataset: { image: row.image, machineType: types[i].name },
        onclick: () => showExplanation(cell),
        onkeydown: (ev) => { if (ev.key === "Enter") showExplanation(cell); },
      }, nodes);
    }));
  });
  replace(container, el("table", { id: "matrix-grid" }, el("thead", {}, head), el("tbody", {}, rows)));
}

function showExplanation(cell) {
  const box = $("explain");
  const machine = cell.machineType ? cell.machineType.name : "";
  $("explain-title").textContent = `${cell.image || ""} for ${machine}`;
  let summary;
  if (cell.fault) summary = `${cell.fault.code}: ${cell.fault.message}`;
  else if (cell.passthrough) summary = cell.reason;
  else if (cell.error) summary = `No build fits: ${cell.error.message}`;
  else summary = `Served: ${cell.filteredDigest || ""} (filtered from ${cell.digest})`;
  $("explain-summary").textContent = summary;
  const rows = (cell.entries || []).map((e) => el("tr", { class: e.served ? "served-row" : "" },
    el("td", { class: "mono", title: e.digest }, shortDigest(e.digest)),
    el("td", {}, e.platform),
    el("td", {}, tags(e.features)),
    el("td", {}, e.attests ? `attestation of ${shortDigest(e.attests)}` : ""),
    el("td", {}, e.fits ? "fits" : "does not fit"),
    el("td", {}, e.served ? "served" : ""),
    el("td", {}, e.reason)));
  replace($("explain-table"), rows.length ? el("table", { id: "explain-entries" },
    el("thead", {}, el("tr", {}, ["Digest", "Platform", "Features", "", "Fits", "Served", "Why"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)) : []);
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

async function unwatch(image) {
  if (!confirm(`Stop watching ${image}?`)) return;
  if (await attempt(() => api("DELETE", `/admin/watched-images?image=${enc(image)}`), `No longer watching ${image}`)) {
    await attempt(loadMatrix);
  }
}

// ---- machine types ----

function parseFeatures(text) {
  return text.split(/[\n,]/).map((f) => f.trim()).filter((f) => f.length);
}

async function loadMachineTypes() {
  const [types, accounts] = await Promise.all([api("GET", "/admin/machine-types"), api("GET", "/admin/accounts")]);
  state.machineTypes = types;
  state.accounts = accounts;
  const users = (name) => accounts.filter((a) => a.machineType === name).map((a) => a.login);
  const rows = types.map((t) => el("tr", { dataset: { machineType: t.name } },
    el("td", {}, t.name),
    el("td", {}, tags(t.features)),
    el("td", {}, t.match),
    el("td", {}, users(t.name).join(", ")),
    el("td", {}, el("div", { class: "actions" },
      el("button", { type: "button", onclick: () => editMachineType(t) }, "Edit"),
      el("button", { type: "button", class: "danger", onclick: () => deleteMachineType(t.name) }, "Delete")))));
  replace($("machine-types-table"), rows.length
    ? el("table", {}, el("thead", {}, el("tr", {}, ["Name", "Features", "Match", "Accounts", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows))
    : el("p", { class: "empty" }, "No machine types yet."));
}

function editMachineType(t) {
  state.editing = t.name;
  $("mt-form-title").textContent = `Edit ${t.name}`;
  $("mt-name").value = t.name;
  $("mt-name").readOnly = true;
  $("mt-features").value = t.features.join("\n");
  $("mt-match").value = t.match;
  $("mt-cancel").hidden = false;
  $("mt-features").focus();
}

function resetMachineTypeForm() {
  state.editing = null;
  $("mt-form").reset();
  $("mt-name").readOnly = false;
  $("mt-form-title").textContent = "New machine type";
  $("mt-cancel").hidden = true;
}

async function saveMachineType(ev) {
  ev.preventDefault();
  const name = $("mt-name").value.trim();
  const body = { features: parseFeatures($("mt-features").value), match: $("mt-match").value };
  if (await attempt(() => api("PUT", `/admin/machine-types/${enc(name)}`, body), `Saved machine type ${name}`)) {
    resetMachineTypeForm();
    await attempt(loadMachineTypes);
  }
}

async function deleteMachineType(name) {
  if (!confirm(`Delete machine type ${name}?`)) return;
  if (await attempt(() => api("DELETE", `/admin/machine-types/${enc(name)}`), `Deleted machine type ${name}`)) {
    await attempt(loadMachineTypes);
  }
}

// ---- accounts ----

function machineTypeOptions(selected) {
  return state.machineTypes.map((t) => el("option", { value: t.name, selected: t.name === selected }, t.name));
}

async function loadAccounts() {
  const [types, accounts] = await Promise.all([api("GET", "/admin/machine-types"), api("GET", "/admin/accounts")]);
  state.machineTypes = types;
  state.accounts = accounts;
  replace($("account-machine-type"), machineTypeOptions(null));
  const rows = accounts.map((a) => {
    const select = el("select", { "aria-label": `machine type of ${a.login}` }, machineTypeOptions(a.machineType));
    select.addEventListener("change", () => setMachineType(a.login, select.value));
    const password = el("input", { type: "password", autocomplete: "new-password", placeholder: "new password",
      "aria-label": `new password for ${a.login}` });
    return el("tr", { dataset: { login: a.login } },
      el("td", {}, a.login),
      el("td", {}, select),
      el("td", {}, el("div", { class: "actions" }, password,
        el("button", { type: "button", onclick: () => setPassword(a.login, password) }, "Set password"))),
      el("td", {}, el("button", { type: "button", class: "danger", onclick: () => deleteAccount(a.login) }, "Delete")));
  });
  replace($("accounts-table"), rows.length
    ? el("table", {}, el("thead", {}, el("tr", {}, ["Login", "Machine type", "Password", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows))
    : el("p", { class: "empty" }, "No accounts yet."));
}

async function createAccount(ev) {
  ev.preventDefault();
  const login = $("account-login").value.trim();
  const body = { machineType: $("account-machine-type").value, password: $("account-password").value };
  if (await attempt(() => api("PUT", `/admin/accounts/${enc(login)}`, body), `Created account ${login}`)) {
    $("account-form").reset();
    await attempt(loadAccounts);
  }
}

async function setMachineType(login, machineType) {
  await attempt(() => api("PUT", `/admin/accounts/${enc(login)}/machine-type`, { machineType }),
    `${login} now pulls as ${machineType}`);
  await attempt(loadAccounts);
}

async function setPassword(login, input) {
  if (await attempt(() => api("PUT", `/admin/accounts/${enc(login)}/password`, { password: input.value }),
    `Password of ${login} changed`)) {
    input.value = "";
  }
}

async function deleteAccount(login) {
  if (!confirm(`Delete account ${login}?`)) return;
  if (await attempt(() => api("DELETE", `/admin/accounts/${enc(login)}`), `Deleted account ${login}`)) {
    await attempt(loadAccounts);
  }
}

// ---- audit log ----

async function loadChanges() {
  const changes = await api("GET", "/admin/changes?limit=200");
  const rows = changes.map((c) => el("tr", {},
    el("td", { class: "mono" }, c.time), el("td", {}, c.who), el("td", {}, c.action), el("td", {}, c.target)));
  replace($("changes-table"), rows.length
    ? el("table", {}, el("thead", {}, el("tr", {}, ["Time (UTC)", "Who", "Action", "Target"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows))
    : el("p", { class: "empty" }, "No changes recorded yet."));
}

// ---- wiring ----

async function boot() {
  $("sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await attempt(async () => {
      const session = await api("POST", "/admin/session", { secret: $("secret").value });
      $("secret").value = "";
      flash("");
      await signedIn(session);
    });
  });
  $("sign-out").addEventListener("click", async () => {
    await attempt(() => api("DELETE", "/admin/session"));
    state.csrf = "";
    showSignIn();
  });
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => { flash(""); showTab(button.dataset.tab); });
  }
  $("watch-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const image = $("watch-image").value.trim();
    if (await attempt(() => api("POST", "/admin/watched-images", { image }), `Watching ${image}`)) {
      $("watch-image").value = "";
      await attempt(loadMatrix);
    }
  });
  $("matrix-refresh").addEventListener("click", () => attempt(loadMatrix));
  $("explain-close").addEventListener("click", () => { $("explain").hidden = true; });
  $("mt-form").addEventListener("submit", saveMachineType);
  $("mt-cancel").addEventListener("click", resetMachineTypeForm);
  $("account-form").addEventListener("submit", createAccount);

  try {
    const session = await api("GET", "/admin/session");
    if (session.signedIn) await signedIn(session);
    else if (session.mode === "iam") flash("This request was not signed: open the page through `metahub admin ui`.");
    else showSignIn();
  } catch (e) {
    flash(explainError(e));
  }
}

document.addEventListener("DOMContentLoaded", boot);
