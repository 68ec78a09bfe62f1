// overlay dashboard: live updates over SSE, table edits, proxy removal, and the trust sections
// (users, join tokens, audit log) with their admin actions.
// Rows are rendered by the server (one renderer); this file only swaps them in, keeps an editor
// the user is typing in, and keeps "last seen" ticking. The trust parts (`[data-trust]`) are
// re-fetched from `GET /` when the audit log grows. Admin actions go with the login's session
// cookie (HttpOnly: no script reads it); a created join token is shown once and kept nowhere.
(function () {
  "use strict";
  var list = document.getElementById("proxies");
  var empty = document.getElementById("empty");
  var count = document.getElementById("count-proxies");
  var live = document.getElementById("live");
  if (!list) return;

  function fromHtml(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return Array.prototype.slice.call(t.content.children);
  }

  function editorState(row) {
    var ta = row.querySelector("textarea.table-json");
    var det = row.querySelector("details.editor");
    return {
      open: !!(det && det.open),
      dirty: !!(ta && ta.value !== ta.defaultValue),
      value: ta ? ta.value : "",
      msg: row.querySelector(".edit-msg")
    };
  }

  // Replace `old` by `fresh`, keeping an open editor and unsaved text.
  function swap(old, fresh) {
    var st = editorState(old);
    if (st.open) {
      var det = fresh.querySelector("details.editor");
      if (det) det.open = true;
    }
    if (st.dirty) {
      var ta = fresh.querySelector("textarea.table-json");
      if (ta) ta.value = st.value;
      say(fresh, "The table changed on the server while you were editing; saving merges your edit on top.", "warn");
    } else if (st.msg && st.msg.textContent) {
      var m = fresh.querySelector(".edit-msg");
      if (m) { m.textContent = st.msg.textContent; m.className = st.msg.className; }
    }
    old.replaceWith(fresh);
  }

  function upsert(row) {
    var old = document.getElementById(row.id);
    if (old) {
      swap(old, row);
    } else {
      row.classList.add("fresh");
      list.appendChild(row);
      setTimeout(function () { row.classList.remove("fresh"); }, 1500);
    }
  }

  function refresh() {
    var n = list.querySelectorAll("section.proxy").length;
    if (count) count.textContent = String(n);
    if (empty) empty.hidden = n > 0;
    tick();
  }

  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 3) return "just now";
    if (s < 60) return s + " s ago";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min ago";
    var h = Math.floor(m / 60);
    return h + " h " + (m % 60) + " min ago";
  }

  function tick() {
    var rows = list.querySelectorAll("section.proxy");
    for (var i = 0; i < rows.length; i++) {
      var seen = Number(rows[i].getAttribute("data-seen"));
      var out = rows[i].querySelector(".ago");
      if (out && seen) {
        out.textContent = ago(seen);
        out.title = new Date(seen).toLocaleString();
      }
    }
  }

  function say(row, text, kind) {
    var m = row.querySelector(".edit-msg");
    if (!m) return;
    m.textContent = text;
    m.className = "edit-msg" + (kind ? " " + kind : "");
  }

  function rowOf(el) {
    while (el && !(el.classList && el.classList.contains("proxy"))) el = el.parentNode;
    return el;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return { status: "error", message: "HTTP " + r.status }; })
        .then(function (j) { return { ok: r.ok, body: j }; });
    });
  }

  function save(row) {
    var id = row.getAttribute("data-id");
    var ta = row.querySelector("textarea.table-json");
    var table;
    try {
      table = JSON.parse(ta.value);
    } catch (e) {
      say(row, "Not valid JSON: " + e.message + ". Nothing was changed.", "bad");
      return;
    }
    if (table === null || typeof table !== "object" || Array.isArray(table)) {
      say(row, "The table must be a JSON object of name → endpoint. Nothing was changed.", "bad");
      return;
    }
    say(row, "Saving…", "");
    post("/api/update_proxy_endpoints/" + encodeURIComponent(id), { endpoints: table })
      .then(function (res) {
        var cur = document.getElementById("proxy-" + id) || row;
        if (res.ok) {
          var t = cur.querySelector("textarea.table-json");
          var text = JSON.stringify(res.body.endpoints, null, 2);
          t.value = text;
          t.defaultValue = text;
          say(cur, "Saved. Proxies subscribed to this table have it now.", "ok");
        } else {
          say(cur, (res.body.message || "refused") + ". Nothing was changed.", "bad");
        }
      })
      .catch(function (e) { say(row, "Could not reach the controller: " + e.message, "bad"); });
  }

  function remove(row) {
    var id = row.getAttribute("data-id");
    var name = row.getAttribute("data-name");
    if (!window.confirm("Remove proxy " + name + " (" + id + ") from the registry?\n" +
        "Its table edits are kept for the next proxy of " + name + ".\n" +
        "A proxy that is still running registers again within a few seconds.")) return;
    post("/api/remove_proxy/" + encodeURIComponent(id)).then(function (res) {
      if (res.ok || (res.body && res.body.message === "Unknown proxy")) {
        row.remove();
        refresh();
      } else {
        say(row, res.body.message || "could not remove", "bad");
      }
    });
  }

  list.addEventListener("click", function (ev) {
    var t = ev.target;
    var row = rowOf(t);
    if (!row || !t.classList) return;
    if (t.classList.contains("save")) save(row);
    else if (t.classList.contains("remove")) remove(row);
  });

  function status(on, text) {
    if (!live) return;
    live.className = "live " + (on ? "on" : "off");
    live.querySelector(".live-text").textContent = text;
  }

  function connect() {
    if (!window.EventSource) { status(false, "no live updates"); return; }
    var es = new EventSource("/api/v1/dashboard/stream");
    es.onopen = function () { status(true, "live"); };
    es.onerror = function () { status(false, "reconnecting"); };
    es.addEventListener("snapshot", function (e) {
      var rows = fromHtml(JSON.parse(e.data).html);
      var keep = {};
      rows.forEach(function (r) { keep[r.id] = true; upsert(r); });
      Array.prototype.slice.call(list.querySelectorAll("section.proxy")).forEach(function (r) {
        if (!keep[r.id]) r.remove();
      });
      // Server order.
      rows.forEach(function (r) { var cur = document.getElementById(r.id); if (cur) list.appendChild(cur); });
      refresh();
    });
    es.addEventListener("proxy", function (e) {
      fromHtml(JSON.parse(e.data).html).forEach(upsert);
      refresh();
    });
    es.addEventListener("removed", function (e) {
      var r = document.getElementById("proxy-" + JSON.parse(e.data).id);
      if (r) r.remove();
      refresh();
    });
    es.addEventListener("audit", function () { reloadTrust(); });
    es.addEventListener("seen", function (e) {
      var d = JSON.parse(e.data);
      var r = document.getElementById("proxy-" + d.id);
      if (r) r.setAttribute("data-seen", String(d.last_seen_ms));
      tick();
    });
  }

  // ---- trust ----

  var reloading = null;
  var reloadAgain = false;

  function localTimes(root) {
    var ts = (root || document).querySelectorAll("time[data-ms]");
    for (var i = 0; i < ts.length; i++) {
      var ms = Number(ts[i].getAttribute("data-ms"));
      if (ms) ts[i].textContent = new Date(ms).toLocaleString();
    }
  }

  // Fetch the page again and swap in every `[data-trust]` part (one at a time; a request
  // arriving meanwhile runs once more afterwards).
  function reloadTrust() {
    if (reloading) { reloadAgain = true; return reloading; }
    reloading = fetch("/", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var parts = doc.querySelectorAll("[data-trust][id]");
        for (var i = 0; i < parts.length; i++) {
          var cur = document.getElementById(parts[i].id);
          if (cur) cur.replaceWith(document.importNode(parts[i], true));
        }
        localTimes(document);
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        reloading = null;
        if (reloadAgain) { reloadAgain = false; reloadTrust(); }
      });
    return reloading;
  }

  // An admin action, with this login's session cookie (sent by the browser, same origin).
  function admin(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (r) {
      if (r.status === 401) { window.location.href = "/login"; }
      return r.json().catch(function () { return { status: "error", message: "HTTP " + r.status }; })
        .then(function (j) { return { ok: r.ok, status: r.status, body: j }; });
    }).catch(function (e) {
      return { ok: false, body: { message: "Could not reach the controller: " + e.message } };
    });
  }

  function tell(el, text, kind) {
    if (!el) return;
    el.textContent = text;
    el.className = "admin-msg" + (kind ? " " + kind : "");
  }

  function refusal(res) {
    var m = (res.body && res.body.message) || "refused";
    if (res.status === 401) m += " (log in again)";
    return m;
  }

  var form = document.getElementById("token-form");
  var created = document.getElementById("token-created");
  var tokenMsg = document.getElementById("token-msg");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var name = form.elements.namedItem("name").value.trim();
      var body = { name: name, ttl: form.elements.namedItem("ttl").value, replace: form.elements.namedItem("replace").checked };
      tell(tokenMsg, "Creating…", "");
      if (created) created.hidden = true;
      admin("/api/v1/admin/tokens", body).then(function (res) {
        if (!res.ok) { tell(tokenMsg, refusal(res), "bad"); return; }
        var t = res.body;
        tell(tokenMsg, "Created a token for " + t.name + ", valid until " + new Date(t.expires_at_ms).toLocaleString() + ".", "ok");
        document.getElementById("created-token").textContent = t.token;
        document.getElementById("created-command").textContent =
          "overlay peer --name " + t.name + " --controller-url " + location.origin +
          " --controller-root " + t.root + " --join " + t.token;
        if (created) created.hidden = false;
        form.reset();
        reloadTrust();
      });
    });
  }

  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (!t || !t.classList) return;
    if (t.classList.contains("copy")) {
      var src = document.getElementById(t.getAttribute("data-copy"));
      if (!src) return;
      var done = function () { t.textContent = "Copied"; setTimeout(function () { t.textContent = "Copy"; }, 1500); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(src.textContent).then(done, function () { selectText(src); });
      } else {
        selectText(src);
        try { if (document.execCommand("copy")) done(); } catch (e) { /* selected: copy by hand */ }
      }
    } else if (t.classList.contains("revoke")) {
      var name = t.getAttribute("data-name");
      var msg = document.getElementById("users-msg");
      var reason = window.prompt("Revoke the key of " + name + "?\nMessages from it will be refused everywhere; " +
        "it can join again only with a token that may replace its key.\n\nReason (kept in the audit log):");
      if (reason === null) return;
      reason = reason.trim();
      if (!reason) { tell(msg, "A reason is needed; nothing was revoked.", "bad"); return; }
      tell(msg, "Revoking " + name + "…", "");
      admin("/api/v1/admin/revoke", { name: name, reason: reason }).then(function (res) {
        if (res.ok) { tell(msg, "Revoked " + name + ".", "ok"); reloadTrust(); }
        else tell(msg, refusal(res) + ". Nothing was changed.", "bad");
      });
    }
  });

  function selectText(el) {
    var r = document.createRange();
    r.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(r);
  }

  localTimes(document);
  refresh();
  setInterval(tick, 1000);
  connect();
})();
