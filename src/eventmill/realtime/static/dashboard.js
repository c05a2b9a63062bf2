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

  function visible(event) {
    var name = $("filter-name").value.trim();
    var user = $("filter-user").value.trim();
    if (name && !globToRegExp(name).test(event.event_name)) return false;
    if (user && (event.user_id || "").indexOf(user) < 0) return false;
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
      if (!detail.hidden) loadDeliveries(event.id, deliveries);
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

  /* ---- DELIVERIES: integration point for the delivery feature -------------------
     Each event's outbound webhook deliveries come from the delivery feature's API:
       GET  /v1/deliveries?event=<event id>   -> the event's deliveries and attempts
       POST /v1/deliveries/<delivery id>/retry -> retry a dead delivery
     Until that API is served here (404), the section says so. The rendering below
     reads the fields it finds (id, endpoint/url, status, attempts) and offers a retry
     for dead deliveries; adjust it to the API's final shape. */
  function loadDeliveries(eventId, container) {
    container.textContent = "";
    var title = document.createElement("h3");
    title.textContent = "Deliveries";
    container.appendChild(title);
    var body = document.createElement("div");
    body.className = "muted";
    body.textContent = "loading…";
    container.appendChild(body);
    fetch("/v1/deliveries?event=" + encodeURIComponent(eventId), {
      headers: { Authorization: "Bearer " + token },
    }).then(function (response) {
      if (response.status === 404) {
        body.textContent = "Delivery tracking is not available on this server.";
        return null;
      }
      if (!response.ok) {
        body.textContent = "Deliveries could not be loaded (HTTP " + response.status + ").";
        return null;
      }
      return response.json();
    }).then(function (data) {
      if (!data) return;
      var list = Array.isArray(data) ? data : (data.deliveries || data.items || []);
      if (!list.length) { body.textContent = "No deliveries for this event."; return; }
      body.textContent = "";
      list.forEach(function (d) {
        var line = document.createElement("div");
        var attempts = Array.isArray(d.attempts) ? d.attempts.length : d.attempts;
        line.textContent = [d.id, d.endpoint_url || d.url || d.endpoint_id, d.status,
          attempts != null ? attempts + " attempt(s)" : null].filter(Boolean).join(" · ");
        if (d.status === "dead" || d.status === "failed") {
          var retry = document.createElement("button");
          retry.type = "button";
          retry.textContent = "Retry";
          retry.addEventListener("click", function (e) {
            e.stopPropagation();
            fetch("/v1/deliveries/" + encodeURIComponent(d.id) + "/retry", {
              method: "POST", headers: { Authorization: "Bearer " + token },
            }).then(function () { loadDeliveries(eventId, container); });
          });
          line.appendChild(document.createTextNode(" "));
          line.appendChild(retry);
        }
        body.appendChild(line);
      });
    }).catch(function () { body.textContent = "Deliveries could not be loaded."; });
  }
  /* ---- end of the deliveries integration point ------------------------------------ */

  function setStatus(status, detail) {
    var el = $("status");
    el.className = "status " + status;
    var text = { connecting: "connecting…", open: "live", closed: "reconnecting…", failed: "refused" }[status] || status;
    if (detail && detail.code && status !== "open") text += " (" + detail.code + (detail.reason ? " " + detail.reason : "") + ")";
    el.textContent = text;
    $("connect").hidden = status === "open" || status === "connecting";
    $("disconnect").hidden = !$("connect").hidden;
  }

  function connect(value) {
    token = value;
    sessionStorage.setItem("eventmill_token", token);
    if (client) client.close();
    client = new EventmillClient({
      token: function () { return token; },
      onEvent: addEvent,
      onStatus: setStatus,
      onGap: function () { setStatus("closed", { code: 4009, reason: "missed events were not replayed" }); },
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
    rows.forEach(function (r) { r.tr.remove(); r.detail.remove(); });
    rows = [];
    applyFilters();
  });

  var saved = sessionStorage.getItem("eventmill_token");
  if (saved) { $("token").value = saved; connect(saved); }
  applyFilters();
})();
