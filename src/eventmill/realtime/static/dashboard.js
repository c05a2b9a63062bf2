/* The eventmill dashboard: sign in with a token, watch events arrive live, filter them.
   Plain JS, no build step; uses EventmillClient from /client.js. */
(function () {
  "use strict";

  var MAX_ROWS = 500; // the page keeps at most this many events (oldest dropped)
  var $ = function (id) { return document.getElementById(id); };
  var client = null;
  var token = "";
  var rows = []; // {event, position, tr, detail}

  function globToRegExp(pattern) {
    var parts = pattern.split("*").map(function (p) { return p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"); });
    return new RegExp("^" + parts.join(".*") + "$");
  }

  // Both filters are patterns: the whole name (or user id), `*` for any characters.
  function visible(event) {
    var name = $("filter-name").value.trim();
    var user = $("filter-user").value.trim();
    if (name && !globToRegExp(name).test(event.event_name)) return false;
    if (user && !globToRegExp(user).test(event.user_id || "")) return false;
    return true;
  }

  function applyFilters() {
    var shown = 0;
    rows.forEach(function (row) {
      var ok = visible(row.event);
      row.tr.hidden = !ok;
      if (!ok) row.detail.hidden = true;
      if (ok) shown += 1;
    });
    $("count").textContent = shown + " of " + rows.length + " events";
    $("empty").hidden = rows.length > 0;
  }

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text == null ? "—" : String(text);
    if (className) td.className = className;
    return td;
  }

  function addEvent(event, message) {
    // signing in again replays the recent events: those shown already stay as they are
    if (rows.some(function (r) { return r.event.id === event.id; })) return;
    var tr = document.createElement("tr");
    tr.className = "event fresh";
    tr.dataset.id = event.id;
    tr.dataset.name = event.event_name;
    tr.appendChild(cell(new Date(event.created_at).toLocaleString()));
    tr.appendChild(cell(event.event_name, "name"));
    tr.appendChild(cell(event.user_id, "user"));
    tr.appendChild(cell(event.source, "source"));
    tr.appendChild(cell(message.position, "position"));

    var detail = document.createElement("tr");
    detail.className = "detail";
    detail.hidden = true;
    var td = document.createElement("td");
    td.colSpan = 5;
    var pre = document.createElement("pre");
    pre.className = "json";
    pre.textContent = JSON.stringify(event, null, 2);
    td.appendChild(pre);
    var deliveries = document.createElement("div");
    deliveries.className = "deliveries";
    td.appendChild(deliveries);
    detail.appendChild(td);

    tr.addEventListener("click", function () {
      detail.hidden = !detail.hidden;
      if (!detail.hidden) loadDeliveries(event.id, deliveries, FOLLOW_POLLS);
    });
    var body = $("rows");
    body.insertBefore(detail, body.firstChild);
    body.insertBefore(tr, detail);
    rows.unshift({ event: event, tr: tr, detail: detail });
    while (rows.length > MAX_ROWS) {
      var old = rows.pop();
      old.tr.remove();
      old.detail.remove();
    }
    var ok = visible(event);
    tr.hidden = !ok;
    applyFilters();
  }

  /* ---- DELIVERIES: the delivery feature's API ---------------------------------------
       GET  /v1/deliveries?event_id=<event id>  -> {"deliveries": [...]}
       GET  /v1/deliveries/<id>                 -> the delivery and its attempts ("history")
       POST /v1/deliveries/<id>/retry           -> send it again
     An end user's token sees deliveries to their own endpoints, an admin API key all. */
  function api(path, options) {
    options = options || {};
    options.headers = { Authorization: "Bearer " + token };
    return fetch(path, options).then(function (response) {
      if (response.ok) return response.json();
      // the service's error body: {"error": "<code>", "message": "...", "details"?}
      return response.json().catch(function () { return {}; }).then(function (body) {
        var said = body && body.message;
        var error = new Error("HTTP " + response.status + (said ? ": " + said : ""));
        error.status = response.status;
        throw error;
      });
    });
  }

  function failed(where) {
    return function (error) {
      where.textContent = "Failed: " + error.message;
      where.classList.add("error");
    };
  }

  // A delivery still pending (queued or in flight) when its event is opened or retried
  // is looked at again until its attempt is done, at most `polls` more times a second
  // apart.
  var FOLLOW_POLLS = 30;
  function loadDeliveries(eventId, container, polls) {
    clearTimeout(container.poll);
    container.textContent = "";
    var title = document.createElement("h3");
    title.textContent = "Deliveries";
    container.appendChild(title);
    var body = document.createElement("div");
    body.className = "muted";
    body.textContent = "loading…";
    container.appendChild(body);
    api("/v1/deliveries?event_id=" + encodeURIComponent(eventId)).then(function (data) {
      var list = data.deliveries || [];
      body.textContent = list.length ? "" : "No deliveries for this event.";
      list.forEach(function (d) { body.appendChild(deliveryLine(d, eventId, container)); });
      var waiting = list.some(function (d) { return d.status === "pending"; });
      if (waiting && polls > 0 && container.isConnected) {
        container.poll = setTimeout(function () {
          if (!container.closest("tr").hidden) loadDeliveries(eventId, container, polls - 1);
        }, 1000);
      }
    }, function (error) {
      body.textContent = error.status === 404
        ? "Delivery tracking is not available on this server."
        : "Deliveries could not be loaded (" + error.message + ").";
    });
  }

  function deliveryLine(d, eventId, container) {
    var line = document.createElement("div");
    line.className = "delivery";
    line.dataset.id = d.id;
    line.dataset.status = d.status;
    var last = d.last_status_code != null ? "HTTP " + d.last_status_code : d.last_error;
    var problem = document.createElement("span");
    problem.className = "problem";
    line.appendChild(document.createTextNode([d.id, "endpoint " + d.endpoint_id, d.status,
      d.attempts + " attempt(s)", last].filter(Boolean).join(" · ") + " "));
    var history = document.createElement("button");
    history.type = "button";
    history.textContent = "Attempts";
    var list = document.createElement("ol");
    list.className = "attempts";
    history.addEventListener("click", function (e) {
      e.stopPropagation();
      api("/v1/deliveries/" + encodeURIComponent(d.id)).then(function (detail) {
        list.textContent = "";
        (detail.history || []).forEach(function (a) {
          var item = document.createElement("li");
          var code = a.status_code != null ? "HTTP " + a.status_code : null;
          item.textContent = [new Date(a.started_at).toLocaleString(), a.outcome, code,
            a.latency_ms != null ? Math.round(a.latency_ms) + " ms" : null,
            a.error !== code ? a.error : null]
            .filter(Boolean).join(" · ");
          list.appendChild(item);
        });
        if (!list.children.length) list.textContent = "No attempt yet.";
      }, failed(problem));
    });
    line.appendChild(history);
    if (d.status === "failed") {
      var retry = document.createElement("button");
      retry.type = "button";
      retry.className = "retry";
      retry.textContent = "Retry";
      retry.addEventListener("click", function (e) {
        e.stopPropagation();
        retry.disabled = true;
        api("/v1/deliveries/" + encodeURIComponent(d.id) + "/retry", { method: "POST" })
          .then(function () { loadDeliveries(eventId, container, FOLLOW_POLLS); }, function (error) {
            retry.disabled = false;
            failed(problem)(error);
          });
      });
      line.appendChild(document.createTextNode(" "));
      line.appendChild(retry);
    }
    line.appendChild(document.createTextNode(" "));
    line.appendChild(problem);
    line.appendChild(list);
    return line;
  }
  /* ---- end of the deliveries integration point ------------------------------------ */

  // Why the server refused or closed, in words: its last "error" message, else the close.
  var REFUSED = {
    4001: "the token was refused",
    4002: "the token has expired: sign in again with a new one",
    4003: "this page's origin is not allowed",
    4029: "too many connections for this user",
  };

  function setStatus(status, detail) {
    var el = $("status");
    el.className = "status " + status;
    var text = { connecting: "connecting…", open: "live", closed: "reconnecting…", failed: "refused" }[status] || status;
    if (detail && detail.code && status !== "open") text += " (" + detail.code + (detail.reason ? " " + detail.reason : "") + ")";
    el.textContent = text;
    var why = "";
    if (status === "failed" || status === "closed") {
      var said = detail && detail.error && detail.error.message;
      why = said || (detail && REFUSED[detail.code]) || "";
    }
    $("problem").textContent = why;
    $("problem").hidden = !why;
    $("connect").hidden = status === "open" || status === "connecting";
    $("disconnect").hidden = !$("connect").hidden;
  }

  function connect(value) {
    token = value;
    sessionStorage.setItem("eventmill_token", token);
    if (client) client.close();
    client = new EventmillClient({
      token: function () { return token; },
      recent: 100,  // what happened just before the page opened, then live
      onEvent: addEvent,
      onStatus: setStatus,
      onGap: function (info) {
        // stays until Clear: the table lacks events from before the reconnect
        $("gap").textContent = "Some events were missed while disconnected (more than the " +
          "server replays" + (info && info.since != null ? ", after position " + info.since : "") +
          "): the table shows what came after. Reload to start afresh.";
        $("gap").hidden = false;
      },
    });
    client.connect();
  }

  $("signin").addEventListener("submit", function (e) {
    e.preventDefault();
    connect($("token").value.trim());
  });
  $("disconnect").addEventListener("click", function () {
    if (client) client.close();
    sessionStorage.removeItem("eventmill_token");
    setStatus("idle");
    $("status").textContent = "not connected";
  });
  $("filters").addEventListener("submit", function (e) { e.preventDefault(); });
  $("filter-name").addEventListener("input", applyFilters);
  $("filter-user").addEventListener("input", applyFilters);
  $("clear").addEventListener("click", function () {
    $("gap").hidden = true;
    rows.forEach(function (r) { r.tr.remove(); r.detail.remove(); });
    rows = [];
    applyFilters();
  });

  // A link with #token=… (eventmill demo prints one) signs in, also when the page is
  // open already; the token then leaves the address bar, so it is not bookmarked or
  // shared by accident.
  function tokenFromLink() {
    var token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token) history.replaceState(null, "", location.pathname + location.search);
    return token;
  }
  window.addEventListener("hashchange", function () {
    var token = tokenFromLink();
    if (token) { $("token").value = token; connect(token); }
  });
  var saved = tokenFromLink() || sessionStorage.getItem("eventmill_token");
  if (saved) { $("token").value = saved; connect(saved); }
  applyFilters();
})();
