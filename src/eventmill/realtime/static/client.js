/*
 * eventmill realtime client: live events over WebSocket, with resume.
 * Served by eventmill at /client.js; no build step, no dependencies.
 *
 *   <script src="/client.js"></script>
 *   <script>
 *     const client = new EventmillClient({
 *       url: "wss://events.example.com/ws",     // default: /ws on this page's host
 *       token: () => fetchTokenSomehow(),         // a string, or a (async) function
 *       events: ["razorpay.payment.*"],           // default: every event of the user
 *       recent: 50,                               // first the last 50 stored (optional)
 *       onEvent(event, message) { ... },          // event = the Event JSON
 *       onStatus(status, detail) { ... },         // "connecting" | "open" | "closed" | "failed"
 *       onGap(info) { ... },                      // missed events can no longer be replayed
 *     });
 *     client.connect();
 *   </script>
 *
 * It reconnects with exponential backoff (with jitter) and resumes from the last store
 * position it saw (`since`), so no event is missed or repeated across reconnects; it
 * resubscribes to its patterns, watches the server's heartbeat, and follows the close
 * codes: 4001/4003/4400 stop (fix the token or origin), 4002 reconnects with a new
 * token (when `token` is a function), 4008 reconnects at once, 4009 reports a gap and
 * starts afresh, anything else (1001 shutdown, 1006, 1011, 1012, 1013) backs off.
 */
(function (root) {
  "use strict";

  var FATAL = { 1009: "message_too_big", 4001: "unauthorized", 4003: "forbidden_origin", 4400: "bad_request" };

  function EventmillClient(options) {
    if (!(this instanceof EventmillClient)) return new EventmillClient(options);
    options = options || {};
    this.options = options;
    this.url = options.url || defaultUrl();
    this.events = options.events ? options.events.slice() : null;
    this.position = options.since != null ? options.since : null;
    this.minDelay = options.minDelay || 500;
    this.maxDelay = options.maxDelay || 30000;
    this.status = "idle";
    this.lastClose = null;
    this._attempt = 0;
    this._ws = null;
    this._stopped = true;
    this._retry = null;
    this._watchdog = null;
    this._heartbeat = 15;
    this._lastError = null;
  }

  function defaultUrl() {
    var loc = root.location;
    return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws";
  }

  EventmillClient.prototype.connect = function () {
    this._stopped = false;
    clearTimeout(this._retry);
    this._open();
    return this;
  };

  EventmillClient.prototype.close = function () {
    this._stopped = true;
    clearTimeout(this._retry);
    clearTimeout(this._watchdog);
    if (this._ws) this._ws.close(1000, "client closed");
    this._setStatus("closed", { code: 1000, reason: "client closed" });
  };

  EventmillClient.prototype.subscribe = function (patterns, since) {
    var list = [].concat(patterns || []);
    this.events = (this.events || []).concat(list.filter(function (p) {
      return (this.events || []).indexOf(p) < 0;
    }, this));
    var message = { type: "subscribe", events: list };
    if (since != null) { message.since = since; this.position = since; }
    this.send(message);
  };

  EventmillClient.prototype.unsubscribe = function (patterns) {
    var list = [].concat(patterns || []);
    this.events = (this.events || ["*"]).filter(function (p) { return list.indexOf(p) < 0; });
    this.send({ type: "unsubscribe", events: list });
  };

  EventmillClient.prototype.ping = function () { this.send({ type: "ping" }); };

  EventmillClient.prototype.send = function (message) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(message));
  };

  EventmillClient.prototype._token = function () {
    var token = this.options.token;
    return Promise.resolve(typeof token === "function" ? token() : token);
  };

  EventmillClient.prototype._open = function () {
    var self = this;
    this._setStatus("connecting", { attempt: this._attempt });
    this._token().then(function (token) {
      if (self._stopped) return;
      var url = new URL(self.url, root.location ? root.location.href : undefined);
      if (token) url.searchParams.set("token", token);
      if (self.position != null) url.searchParams.set("since", String(self.position));
      else if (self.options.recent) url.searchParams.set("recent", String(self.options.recent));
      if (self.events) url.searchParams.set("events", self.events.join(","));
      var ws = new root.WebSocket(url.toString());
      self._ws = ws;
      ws.onopen = function () { self._arm(); };
      ws.onmessage = function (e) { if (ws === self._ws) self._message(JSON.parse(e.data)); };
      ws.onclose = function (e) { if (ws === self._ws) self._closed(e.code, e.reason); };
    }, function (err) {
      self._lastError = err;
      self._schedule();
    });
  };

  EventmillClient.prototype._message = function (m) {
    this._arm();
    switch (m.type) {
      case "connected":
        this._attempt = 0;
        if (m.heartbeat_seconds) this._heartbeat = m.heartbeat_seconds;
        if (m.position != null && this.position == null) this.position = m.position;
        this._setStatus("open", m);
        break;
      case "event":
        this.position = m.position;
        if (this.options.onEvent) this.options.onEvent(m.payload, m);
        break;
      case "resumed":
        this.position = Math.max(this.position || 0, m.position);
        if (this.options.onResumed) this.options.onResumed(m);
        break;
      case "heartbeat":
        if (m.position != null && (this.position == null || m.position > this.position)) {
          this.position = m.position;
        }
        break;
      case "error":
        this._lastError = m;
        if (this.options.onError) this.options.onError(m);
        break;
      default:
        if (this.options.onMessage) this.options.onMessage(m);
    }
  };

  EventmillClient.prototype._arm = function () {
    var self = this;
    clearTimeout(this._watchdog);
    // No message (event or heartbeat) for two heartbeats: the connection is dead.
    this._watchdog = setTimeout(function () {
      if (self._ws) self._ws.close(4000, "heartbeat timeout");
    }, (this._heartbeat * 2 + 5) * 1000);
  };

  EventmillClient.prototype._closed = function (code, reason) {
    clearTimeout(this._watchdog);
    this._ws = null;
    this.lastClose = { code: code, reason: reason };
    if (this._stopped) return;
    if (FATAL[code] || (code === 4002 && typeof this.options.token !== "function")) {
      this._stopped = true;
      this._setStatus("failed", { code: code, reason: reason, error: this._lastError });
      return;
    }
    this._setStatus("closed", { code: code, reason: reason });
    if (code === 4009) {
      var info = { since: this.position, code: code, reason: reason, error: this._lastError };
      this.position = null; // start afresh: the app reloads its state
      if (this.options.onGap) this.options.onGap(info);
      this._attempt = 0;
    }
    if (code === 4008 || code === 4009 || code === 4002) {
      this._open(); // at once: resume (4008), afresh (4009), with a new token (4002)
      return;
    }
    this._schedule();
  };

  EventmillClient.prototype._schedule = function () {
    var self = this;
    var delay = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this._attempt));
    delay = delay / 2 + Math.random() * delay / 2;
    this._attempt += 1;
    this._retry = setTimeout(function () { if (!self._stopped) self._open(); }, delay);
  };

  EventmillClient.prototype._setStatus = function (status, detail) {
    this.status = status;
    if (this.options.onStatus) this.options.onStatus(status, detail);
  };

  root.EventmillClient = EventmillClient;
  if (typeof module === "object" && module.exports) module.exports = EventmillClient;
})(typeof window !== "undefined" ? window : globalThis);
