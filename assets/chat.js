// overlay chat page: contacts, the selected conversation, live updates over SSE.
//
// Everything a message or a name contains is put on the page with textContent (never
// innerHTML), so `<script>` in a message is shown as text. The one exception is an AI reply's
// `html`: its Markdown rendered by the peer (comrak, safe mode: raw HTML omitted, `javascript:`
// links emptied). A person's message stays text, its http(s) links made clickable as elements
// built here. The page never polls for messages:
// /api/v1/events pushes each stored message, state change, stream chunk and clear.
(function () {
  "use strict";

  var body = document.body;
  var me = body.dataset.me || "";
  var el = {
    app: document.getElementById("app"),
    contacts: document.getElementById("contacts"),
    messages: document.getElementById("messages"),
    empty: document.getElementById("empty"),
    input: document.getElementById("input"),
    send: document.getElementById("send"),
    composer: document.getElementById("composer"),
    convName: document.getElementById("conv-name"),
    convSub: document.getElementById("conv-sub"),
    convAvatar: document.getElementById("conv-avatar"),
    clearChat: document.getElementById("clear-chat"),
    clearAll: document.getElementById("clear-all"),
    toggle: document.getElementById("toggle-contacts"),
    scrim: document.getElementById("scrim"),
    live: document.getElementById("live"),
    liveLabel: document.getElementById("live-label"),
    sendError: document.getElementById("send-error"),
    notify: document.getElementById("notify"),
    exports: document.getElementById("exports"),
    exportMd: document.getElementById("export-md"),
    exportJson: document.getElementById("export-json"),
    newBelow: document.getElementById("new-below"),
    replyTools: document.getElementById("reply-tools"),
    stopReply: document.getElementById("stop-reply"),
    regenerate: document.getElementById("regenerate"),
  };
  var baseTitle = document.title;

  var current = null; // the selected peer's name, as the contact list spells it
  var contacts = []; // [{name, display, kind, online, reachable, last_text, last_at_ms}]
  var bubbles = {}; // message id -> {row, msg}
  var streams = {}; // reply id -> {row, seq, text}
  var olderBefore = null; // seq for the next older page, or null
  var olderLoaded = false; // earlier pages of the open conversation were loaded
  var unread = {}; // lower-case peer -> count
  var askedAgain = null; // the AI asked to regenerate, until its new answer starts

  function same(a, b) {
    return String(a || "").toLowerCase() === String(b || "").toLowerCase();
  }

  function node(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function initial(name) {
    return (String(name || "?").charAt(0) || "?").toUpperCase();
  }

  // Same palette choice as views.rs `hue`: sum of the lower-case name's bytes, mod 6.
  function hue(name) {
    var s = 0, n = String(name || "").toLowerCase();
    for (var i = 0; i < n.length; i++) s += n.charCodeAt(i);
    return "hue-" + (s % 6);
  }

  function contactOf(name) {
    for (var i = 0; i < contacts.length; i++) if (same(contacts[i].name, name)) return contacts[i];
    return null;
  }

  function timeOf(ms) {
    var d = new Date(ms);
    var now = new Date();
    var hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (d.toDateString() === now.toDateString()) return hm;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm;
  }

  // ---- contacts ----

  // Same as views.rs `contact_subtitle`: the last message, else what the contact is.
  function subtitle(c) {
    if (c.last_text) return c.last_text;
    if (c.reachable === false) return "not reachable now";
    if (c.kind === "ai") return "AI model";
    return c.online === true ? "online" : c.online === false ? "offline" : "person";
  }

  function contactButton(c) {
    var kind = c.kind === "ai" ? "ai" : "person";
    var b = node("button", "contact" + (c.reachable === false ? " unreachable" : ""));
    b.type = "button";
    b.dataset.peer = c.name;
    b.dataset.kind = kind;
    var presence = c.online === true ? "online" : c.online === false ? "offline" : "unknown";
    b.title = c.name + (kind === "ai" ? " (AI)" : "") + (presence === "unknown" ? "" : " · " + presence);
    var av = node("span", "avatar " + kind + " " + hue(c.name), initial(c.name));
    var who = node("span", "who");
    var name = node("span", "name", c.display || c.name);
    if (kind === "ai") name.appendChild(node("span", "tag", "AI"));
    who.appendChild(name);
    who.appendChild(node("span", "preview", subtitle(c)));
    var dot = node("span", "presence " + presence);
    if (presence !== "unknown") dot.setAttribute("aria-label", presence);
    b.appendChild(av);
    b.appendChild(who);
    var n = unread[String(c.name).toLowerCase()];
    if (n) b.appendChild(node("span", "unread", n > 99 ? "99+" : n));
    b.appendChild(dot);
    if (current && same(c.name, current)) b.classList.add("active");
    return b;
  }

  function renderContacts(error) {
    var frag = document.createDocumentFragment();
    if (error) frag.appendChild(node("p", "contacts-error", "Could not reach your proxy: " + error));
    [["person", "People", "No one yet"], ["ai", "AI models", "None configured"]].forEach(function (g) {
      frag.appendChild(node("h2", "group", g[1]));
      var list = node("div", "group-list");
      list.dataset.group = g[0];
      var any = false;
      contacts.forEach(function (c) {
        if ((c.kind === "ai" ? "ai" : "person") !== g[0]) return;
        list.appendChild(contactButton(c));
        any = true;
      });
      if (!any) list.appendChild(node("p", "none", g[2]));
      frag.appendChild(list);
    });
    el.contacts.replaceChildren(frag);
  }

  function contactsFromPage() {
    var out = [];
    el.contacts.querySelectorAll(".contact").forEach(function (b) {
      var dot = b.querySelector(".presence");
      out.push({
        name: b.dataset.peer,
        display: b.dataset.display || b.dataset.peer,
        kind: b.dataset.kind,
        online: dot.classList.contains("online") ? true : dot.classList.contains("offline") ? false : null,
        reachable: b.dataset.reachable !== "false",
        last_text: b.dataset.last || "",
      });
    });
    return out;
  }

  function loadContacts() {
    return fetch("/api/v1/contacts")
      .then(function (r) { return r.json(); })
      .then(function (list) {
        contacts = list.contacts || [];
        renderContacts(list.error);
        if (current) showHeader(current);
      })
      .catch(function () { /* keep the list we have */ });
  }

  function notePreview(msg) {
    var c = contactOf(msg.peer);
    if (!c) {
      c = { name: msg.peer, kind: "person", online: null, reachable: false };
      contacts.push(c);
    }
    c.last_text = msg.text.length > 80 ? msg.text.slice(0, 80) + "…" : msg.text;
    c.last_at_ms = msg.sent_at_ms;
    // Unread: anything that comes in outside the open conversation, or while the page is not
    // looked at.
    if (!msg.outgoing && (!current || !same(msg.peer, current) || document.hidden)) {
      var k = String(msg.peer).toLowerCase();
      unread[k] = (unread[k] || 0) + 1;
      if (document.hidden) notify(c, msg);
    }
    renderContacts();
    showUnreadInTitle();
  }

  // "(3) alice · overlay chat": what is unread, in the tab's title.
  function showUnreadInTitle() {
    var n = 0;
    Object.keys(unread).forEach(function (k) { n += unread[k]; });
    document.title = n > 0 ? "(" + (n > 99 ? "99+" : n) + ") " + baseTitle : baseTitle;
  }

  // A desktop notification, once the user allowed them (the Turn on notifications button).
  function notify(c, msg) {
    var N = window.Notification;
    if (!N || N.permission !== "granted") return;
    try {
      var n = new N((c && c.display) || msg.from, {
        body: msg.error ? "could not answer" : msg.text.slice(0, 140),
        tag: "overlay-" + String(msg.peer).toLowerCase(),
      });
      n.onclick = function () {
        window.focus();
        // Through the address, as a click in the list: it opens there (and stays on reload).
        location.hash = encodeURIComponent(c ? c.name : msg.peer);
        if (n.close) n.close();
      };
    } catch (e) { /* some browsers allow them only from a service worker: the badge stays */ }
  }

  function showNotifyButton() {
    var N = window.Notification;
    el.notify.hidden = !N || N.permission !== "default";
  }

  el.notify.addEventListener("click", function () {
    var N = window.Notification;
    if (!N) return;
    Promise.resolve(N.requestPermission()).then(showNotifyButton, showNotifyButton);
  });

  // Back on the page: what is open is read.
  document.addEventListener("visibilitychange", function () {
    showNotifyButton();
    if (!document.hidden && current) {
      delete unread[String(current).toLowerCase()];
      renderContacts();
      showUnreadInTitle();
    }
  });

  // ---- the conversation ----

  function showHeader(peer) {
    var c = contactOf(peer);
    var kind = c && c.kind === "ai" ? "ai" : "person";
    el.convName.textContent = (c && c.display) || peer;
    var sub = kind === "ai" ? "AI model" : "Person";
    if (c && c.online === true) sub += " · online";
    if (c && c.online === false) sub += " · offline";
    if (c && c.reachable === false) sub += " · not in your proxy's table";
    el.convSub.textContent = sub;
    el.convAvatar.textContent = initial(peer);
    el.convAvatar.className = "avatar " + kind + " " + hue(peer);
    el.convAvatar.hidden = false;
    el.clearChat.hidden = false;
    var base = "/api/v1/conversations/" + encodeURIComponent(peer) + "/export?format=";
    el.exportMd.href = base + "md";
    el.exportJson.href = base + "json";
    el.exports.hidden = false;
  }

  // A person's text, its http(s) links clickable (new tab, no opener, no referrer).
  var LINK = /\bhttps?:\/\/[^\s<>"']+/g;
  function textWithLinks(el, text) {
    var at = 0, m;
    LINK.lastIndex = 0;
    while ((m = LINK.exec(text)) !== null) {
      var url = m[0].replace(/[.,;:!?)\]]+$/, "");
      if (m.index > at) el.appendChild(document.createTextNode(text.slice(at, m.index)));
      var a = node("a", null, url);
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      el.appendChild(a);
      at = m.index + url.length;
      LINK.lastIndex = at;
    }
    if (at < text.length) el.appendChild(document.createTextNode(text.slice(at)));
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Pages beyond loopback in plain HTTP have no clipboard API: the old way.
    var t = node("textarea", null, text);
    t.style.position = "fixed";
    t.style.opacity = "0";
    document.body.appendChild(t);
    t.select();
    var ok = document.execCommand("copy");
    t.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  // An AI reply's rendered Markdown: links open in a new tab, code blocks get a copy button.
  function markdownInto(el, html) {
    el.innerHTML = html;
    el.querySelectorAll("a").forEach(function (a) {
      if (!a.getAttribute("href")) {
        // A link whose address the renderer emptied (`javascript:` and the like): its words.
        var words = node("span", "dead-link", a.textContent);
        words.title = "link removed: its address was not a web address";
        a.replaceWith(words);
        return;
      }
      a.target = "_blank";
      a.rel = "noopener noreferrer";
    });
    el.querySelectorAll("pre").forEach(function (pre) {
      var box = node("div", "code-box");
      pre.parentNode.insertBefore(box, pre);
      box.appendChild(pre);
      var b = node("button", "copy", "Copy");
      b.type = "button";
      b.title = "Copy this code";
      b.addEventListener("click", function () {
        copyText(pre.textContent).then(function () {
          b.textContent = "Copied";
        }, function () {
          b.textContent = "Select and copy";
        });
        setTimeout(function () { b.textContent = "Copy"; }, 1500);
      });
      box.appendChild(b);
    });
  }

  function stateLabel(msg) {
    if (!msg.outgoing) return null;
    if (msg.state === "pending" && msg.waiting) return { cls: "waiting", text: "waiting for your proxy…", title: msg.waiting + " (kept; it will be sent when your proxy is back)" };
    if (msg.state === "pending") return { cls: "pending", text: "sending…", title: "Handed to your proxy, not yet delivered" };
    if (msg.state === "delivered") return { cls: "delivered", text: "✓ delivered", title: "Stored by " + msg.to };
    if (msg.state === "failed") return { cls: "failed", text: "failed: " + (msg.reason || "unknown reason"), title: msg.reason || "" };
    return null;
  }

  function fillRow(row, msg) {
    row.className = "msg " + (msg.outgoing ? "out" : "in") + (msg.error ? " error" : "") +
      (msg.auto_reply ? " auto" : "") + (msg.outgoing ? " state-" + msg.state : "") +
      (msg.outgoing && msg.state === "pending" && msg.waiting ? " waiting" : "");
    row.dataset.id = msg.id;
    row.dataset.seq = msg.seq;
    var bubble = node("div", "bubble");
    if (msg.error) bubble.appendChild(node("span", "error-title", "⚠ " + msg.from + " could not answer"));
    var text = node("div", msg.html ? "text md" : "text");
    if (msg.html) markdownInto(text, msg.html);
    else textWithLinks(text, msg.text);
    bubble.appendChild(text);
    var meta = node("div", "meta");
    if (msg.auto_reply) meta.appendChild(node("span", "auto-tag", "auto-reply"));
    if (msg.unauthenticated) {
      var u = node("span", "unauth-tag", "unauthenticated");
      u.title = "Sent through a proxy of the original system, which signs nothing: nobody vouches that it is from " + msg.from + ".";
      meta.appendChild(u);
    }
    var t = node("time", "time", timeOf(msg.sent_at_ms));
    t.title = new Date(msg.sent_at_ms).toLocaleString();
    meta.appendChild(t);
    var st = stateLabel(msg);
    if (st) {
      var s = node("span", "state " + st.cls, st.text);
      s.title = st.title;
      meta.appendChild(s);
    }
    bubble.appendChild(meta);
    row.replaceChildren(bubble);
  }

  function nearBottom() {
    var m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  }

  function scrollDown() {
    el.messages.scrollTop = el.messages.scrollHeight;
    el.newBelow.hidden = true;
  }

  el.newBelow.addEventListener("click", scrollDown);
  el.messages.addEventListener("scroll", function () {
    if (!el.newBelow.hidden && nearBottom()) el.newBelow.hidden = true;
  });

  // Puts a message in the right place (by seq), or updates it in place.
  function upsert(msg, stick) {
    var known = bubbles[msg.id];
    if (known) {
      fillRow(known.row, msg);
      known.msg = msg;
      replyTools();
      return;
    }
    var stream = streams[msg.id];
    var row = stream ? stream.row : node("div", "msg");
    delete streams[msg.id];
    fillRow(row, msg);
    bubbles[msg.id] = { row: row, msg: msg };
    // In order of seq, before the replies still being written (a reply's first chunk can
    // arrive before the question's own event); a finished stream moves to its place too.
    var rows = el.messages.querySelectorAll(".msg[data-seq]");
    var before = null;
    for (var i = 0; i < rows.length; i++) {
      if (Number(rows[i].dataset.seq) > msg.seq && rows[i] !== row) { before = rows[i]; break; }
    }
    if (!before) before = el.messages.querySelector(".msg.streaming");
    if (before !== row) el.messages.insertBefore(row, before);
    el.empty.hidden = true;
    if (stick) scrollDown();
    replyTools();
  }

  function clearView(text) {
    bubbles = {};
    streams = {};
    olderBefore = null;
    el.messages.replaceChildren(el.empty);
    el.empty.hidden = false;
    el.empty.querySelector("p:last-child").textContent = text;
    replyTools();
  }

  function olderButton() {
    var b = node("button", "older ghost", "Show earlier messages");
    b.type = "button";
    b.addEventListener("click", function () {
      var top = el.messages.scrollHeight;
      b.remove();
      loadPage(current, olderBefore).then(function () {
        el.messages.scrollTop = el.messages.scrollHeight - top;
      });
    });
    return b;
  }

  function loadPage(peer, before) {
    var url = "/api/v1/conversations/" + encodeURIComponent(peer) + "/messages?limit=100" +
      (before ? "&before=" + before : "");
    return fetch(url)
      .then(function (r) { return r.json(); })
      .then(function (page) {
        if (!current || !same(peer, current)) return;
        var list = (page.messages || []).slice().reverse(); // the API pages newest first
        list.forEach(function (m) { upsert(m, false); });
        // The newest page again (catching up after a reconnect) leaves what was loaded
        // further back, and where the next earlier page starts, as they were.
        if (before) olderLoaded = true;
        if (before || !olderLoaded) olderBefore = page.next_before || null;
        var old = el.messages.querySelector(".older");
        if (old) old.remove();
        if (olderBefore) el.messages.insertBefore(olderButton(), el.messages.firstChild.nextSibling);
      });
  }

  // Shows message `seq` of the open conversation (from a search result), loading earlier
  // pages until it is there; marked a moment.
  function reveal(seq) {
    var row = el.messages.querySelector('.msg[data-seq="' + seq + '"]');
    if (row) {
      row.scrollIntoView({ block: "center" });
      row.classList.add("found");
      setTimeout(function () { row.classList.remove("found"); }, 4000);
      return Promise.resolve();
    }
    if (olderBefore && olderBefore > seq) {
      return loadPage(current, olderBefore).then(function () { return reveal(seq); });
    }
    // Not there any more (cleared): the newest, as usual.
    scrollDown();
    return Promise.resolve();
  }

  function select(peer, at) {
    if (!peer) return;
    current = peer;
    olderLoaded = false;
    delete unread[String(peer).toLowerCase()];
    showUnreadInTitle();
    body.dataset.peer = peer;
    showHeader(peer);
    var c = contactOf(peer);
    var shown = (c && c.display) || peer;
    clearView("No messages with " + shown + " yet. Say hello!");
    el.input.disabled = false;
    el.send.disabled = false;
    el.input.placeholder = "Message " + shown;
    el.sendError.hidden = true;
    el.app.classList.remove("contacts-open");
    renderContacts();
    loadPage(peer, null).then(at ? function () { return reveal(at); } : scrollDown);
    if (window.matchMedia("(min-width: 721px)").matches) el.input.focus();
  }

  // `#bob` opens the chat with bob; `#bob?at=SEQ` opens it at that message (search results).
  function fromHash() {
    var h = decodeURIComponent(location.hash.replace(/^#/, ""));
    var at = null;
    var q = h.indexOf("?at=");
    if (q >= 0) {
      at = Number(h.slice(q + 4)) || null;
      h = h.slice(0, q);
    }
    if (!h) return;
    if (!same(h, current)) {
      var c = contactOf(h);
      select(c ? c.name : h, at);
    } else if (at) {
      reveal(at);
    }
  }

  // ---- sending ----

  function showError(text) {
    el.sendError.textContent = text;
    el.sendError.title = "";
    delete el.sendError.dataset.waiting;
    el.sendError.hidden = false;
  }

  function send() {
    var text = el.input.value;
    if (!current || !text.trim()) return;
    el.input.value = "";
    autosize();
    el.sendError.hidden = true;
    var peer = current;
    fetch("/send_message", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ peer_id: peer, message: text }),
    })
      .then(function (r) { return r.json().then(function (b) { return { ok: r.ok, body: b }; }); })
      .then(function (res) {
        if (res.ok) return;
        var why = res.body.error || res.body.message || "unknown error";
        // Kept by the peer and sent later: say so plainly; the details are in the tooltip.
        if (/^not sent yet/i.test(why)) {
          showError("Not sent yet: your proxy cannot be reached. The message is kept and will be sent when your proxy is back.");
          el.sendError.title = why;
          el.sendError.dataset.waiting = "1";
        } else showError("Not sent: " + why);
      })
      .catch(function (e) {
        el.input.value = text;
        showError("Not sent: this page cannot reach its peer (" + e.message + ")");
      });
  }

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = Math.min(el.input.scrollHeight + 2, 180) + "px";
    el.input.style.overflowY = el.input.scrollHeight + 2 > 180 ? "auto" : "hidden";
  }

  el.input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  el.input.addEventListener("input", autosize);
  el.composer.addEventListener("submit", function (e) {
    e.preventDefault();
    send();
  });

  // ---- an AI's reply: stop it, ask for another ----

  // In a conversation with an AI model: "Stop" while its reply is awaited or being written,
  // "Regenerate" when its answer is the last message.
  function replyTools() {
    var c = current && contactOf(current);
    var ai = !!(c && c.kind === "ai");
    var writing = false;
    for (var id in streams) if (Object.prototype.hasOwnProperty.call(streams, id)) writing = true;
    var lastMsg = null; // the newest message of the conversation
    for (var k in bubbles) {
      if (!Object.prototype.hasOwnProperty.call(bubbles, k)) continue;
      var m = bubbles[k].msg;
      if (!lastMsg || m.seq > lastMsg.seq) lastMsg = m;
    }
    var awaited = same(askedAgain, current) ||
      !!(lastMsg && lastMsg.outgoing && lastMsg.state === "pending" && !lastMsg.waiting);
    var answered = !!(lastMsg && !lastMsg.outgoing && same(lastMsg.from, current));
    el.stopReply.hidden = !(ai && (writing || awaited));
    el.regenerate.hidden = !(ai && !writing && !awaited && answered);
    el.replyTools.hidden = el.stopReply.hidden && el.regenerate.hidden;
  }

  function replyAction(action, button, busyText) {
    if (!current) return;
    var peer = current;
    var label = button.textContent;
    button.disabled = true;
    button.textContent = busyText;
    fetch("/api/v1/conversations/" + encodeURIComponent(peer) + "/" + action, { method: "POST" })
      .then(function (r) { return r.json().then(function (b) { return { ok: r.ok, body: b }; }); })
      .then(function (res) {
        // Stop too late (it had ended) or too early (not asked yet): say so.
        if (res.ok && (action !== "stop" || res.body.stopped)) return;
        if (action === "regenerate") askedAgain = null;
        if (same(peer, current)) showError(res.body.error || res.body.message || "unknown error");
      })
      .catch(function (e) {
        if (action === "regenerate") askedAgain = null;
        if (same(peer, current)) showError("This page cannot reach its peer (" + e.message + ")");
      })
      .then(function () {
        button.disabled = false;
        button.textContent = label;
        replyTools();
      });
  }

  el.stopReply.addEventListener("click", function () {
    replyAction("stop", el.stopReply, "Stopping…");
  });
  el.regenerate.addEventListener("click", function () {
    // Awaited from now on (its answer may arrive before this request's answer does).
    askedAgain = current;
    replyAction("regenerate", el.regenerate, "Asking again…");
  });

  // ---- contacts, clearing, small screens ----

  el.contacts.addEventListener("click", function (e) {
    var b = e.target.closest(".contact");
    if (!b) return;
    if (same(b.dataset.peer, current)) {
      el.app.classList.remove("contacts-open");
      return;
    }
    location.hash = encodeURIComponent(b.dataset.peer);
  });
  window.addEventListener("hashchange", fromHash);

  el.clearChat.addEventListener("click", function () {
    if (!current || !confirm("Clear your whole chat with " + current + "? This cannot be undone.")) return;
    var peer = current;
    fetch("/clear_chat/" + encodeURIComponent(peer), { method: "POST" }).then(function (r) {
      // 502: cleared here, but the proxy could not forget the AI's memory; the answer says so.
      if (r.status === 502) return clearedButSays(r, same(peer, current));
      if (!r.ok) return showError("Could not clear the chat (" + r.status + ")");
      // The `cleared` event does the same; this covers a page whose live link is down.
      if (same(peer, current)) clearView("Chat cleared.");
    });
  });
  el.clearAll.addEventListener("click", function () {
    if (!confirm("Clear ALL your chats? This cannot be undone.")) return;
    fetch("/clear_all_chats", { method: "POST" }).then(function (r) {
      if (r.status === 502) return clearedButSays(r, !!current).then(loadContacts);
      if (!r.ok) return showError("Could not clear the chats (" + r.status + ")");
      if (current) clearView("Chat cleared.");
      loadContacts();
    });
  });
  // A clear whose chat went but whose AI memory the proxy could not forget: shown as cleared,
  // with the server's words on what is left to do.
  function clearedButSays(r, shown) {
    return r.json().catch(function () { return {}; }).then(function (body) {
      if (shown) clearView("Chat cleared.");
      showError(body.error || body.message || "Cleared, but your proxy could not forget the AI's memory of it.");
    });
  }
  el.toggle.addEventListener("click", function () {
    el.app.classList.toggle("contacts-open");
  });
  el.scrim.addEventListener("click", function () {
    el.app.classList.remove("contacts-open");
  });

  // ---- live updates ----

  function onEvent(ev) {
    var data;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    if (data.type === "message" || data.type === "state") {
      var m = data.message;
      if (current && same(m.peer, current)) {
        var stick = m.outgoing || nearBottom();
        upsert(m, stick);
        // Scrolled up to read: the view stays, and a button says there is more below.
        if (!stick && data.type === "message") el.newBelow.hidden = false;
      }
      // The proxy took our kept messages: the "not sent yet" note is over.
      if (data.type === "state" && m.outgoing && !m.waiting && el.sendError.dataset.waiting &&
          !el.messages.querySelector(".msg.waiting")) {
        el.sendError.hidden = true;
        delete el.sendError.dataset.waiting;
      }
      if (data.type === "message") notePreview(m);
      // The new answer asked for has come.
      if (data.type === "message" && !m.outgoing && same(m.from, askedAgain)) askedAgain = null;
    } else if (data.type === "stream") {
      if (!current || !same(data.peer, current) || bubbles[data.id]) return;
      var s = streams[data.id];
      if (!s) {
        var row = node("div", "msg in streaming");
        var bubble = node("div", "bubble");
        bubble.appendChild(node("div", "text", ""));
        bubble.appendChild(node("div", "meta", data.from + " is writing…"));
        row.appendChild(bubble);
        row.dataset.id = data.id;
        s = streams[data.id] = { row: row, seq: -1, text: "" };
        var stick = nearBottom();
        el.messages.appendChild(row);
        el.empty.hidden = true;
        if (stick) scrollDown();
      }
      if (same(data.from, askedAgain)) askedAgain = null;
      if (data.seq <= s.seq) return; // already have it
      s.seq = data.seq;
      s.text += data.delta;
      var stickNow = nearBottom();
      s.row.querySelector(".text").textContent = s.text;
      if (stickNow) scrollDown();
      replyTools();
    } else if (data.type === "presence") {
      // Who is online now; someone new in the directory: the whole list again.
      var listed = {};
      var someoneNew = false;
      (data.directory || []).forEach(function (e) {
        listed[String(e.name).toLowerCase()] = true;
        var c = contactOf(e.name);
        if (!c) { someoneNew = true; return; }
        c.online = e.online;
        c.reachable = true;
      });
      contacts.forEach(function (c) {
        if (!listed[String(c.name).toLowerCase()]) {
          c.reachable = false;
          c.online = null;
        }
      });
      if (someoneNew) loadContacts();
      else renderContacts();
      if (current) showHeader(current);
    } else if (data.type === "cleared") {
      if (data.peer === null || data.peer === undefined) {
        unread = {};
        contacts.forEach(function (c) { c.last_text = ""; });
        if (current) clearView("Chat cleared.");
      } else {
        var c = contactOf(data.peer);
        if (c) c.last_text = "";
        delete unread[String(data.peer).toLowerCase()];
        if (current && same(data.peer, current)) clearView("Chat cleared.");
      }
      renderContacts();
      showUnreadInTitle();
    }
  }

  var everOpen = false;
  function connect() {
    var es = new EventSource("/api/v1/events");
    es.onopen = function () {
      body.dataset.live = "1";
      el.live.className = "live-dot on";
      el.liveLabel.textContent = "live";
      // Catch up on anything stored while we were not listening.
      // data-synced: the open conversation is up to date (for whoever watches the page).
      body.dataset.synced = "0";
      (current ? loadPage(current, null) : Promise.resolve()).then(function () {
        body.dataset.synced = "1";
      }, function () { /* the next reconnect tries again */ });
      if (everOpen) loadContacts();
      everOpen = true;
    };
    es.onerror = function () {
      body.dataset.live = "0";
      el.live.className = "live-dot off";
      el.liveLabel.textContent = "reconnecting…";
    };
    es.onmessage = onEvent;
  }

  contacts = contactsFromPage();
  showNotifyButton();
  connect();
  fromHash();
  // On a phone with nothing selected yet, start on the contact list.
  if (!current && window.matchMedia("(max-width: 720px)").matches) el.app.classList.add("contacts-open");
})();
