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
 *       onStatus(status, detail) { ... },         // "connecting" | "open" | "closed" | "failed" | "paused"
 *       onGap(info) { ... },                      // missed events can no longer be replayed
 *     });
 *     client.connect();
 *   </script>
 *
 * It reconnects with exponential backoff (with jitter) and resumes from the last store
 * position it saw (`since`), so no event is missed or repeated across reconnects; it
 * resubscribes to its patterns, watches the server's heartbeat, and follows the close
 * codes: 4001/4003/4400 stop (fix the token or origin), 4002 reconnects with a new
 * token (when `token` is a function; it stops if the function gives the expired token
 * again), 4008 reconnects at once, 4009 reports a gap and starts afresh, anything else
 * (1001 shutdown, 1006, 1011, 1012, 1013) backs off. A reconnect "at once" that is
 * closed again before the server said "connected" backs off too, so a client never
 * loops. A `token` function that throws or rejects is retried with backoff.
 *
 * Unsubscribed from every pattern, the connection stays open and gets nothing; if it
 * drops then, the client waits ("paused") until `subscribe` gives it patterns again,
 * and then starts from the newest event (what happened while it wanted nothing is
 * not replayed).
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
    this._generation = 0; // bumped by close(): a pending open of before is dropped
    this._pending = false; // an open waits for its token
    this._paused = false; // no socket while subscribed to nothing
    this._sentToken = null; // the token of the current socket
    this._expiredToken = null; // the token the server closed with 4002
    this._outbox = []; // messages waiting for "connected"
    this._requests = {}; // id -> {events, position} before that subscribe/unsubscribe
    this._nextId = 1;
    // positions of the events handed out lately: a replay (subscribe with `since`, a
    // resume after a drop) overlapping them does not hand them out again
    this._delivered = new Set(); // in the order handed out (a Set keeps insertion order)
  }

  var DELIVERED_MAX = 10000; // the server's default resume_max_events

  var MAX_URL = 8000; // servers refuse longer addresses (414)

  function defaultUrl() {
    var loc = root.location;
    return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws";
  }

  EventmillClient.prototype.connect = function () {
    if (!this._stopped && (this._ws || this._pending)) return this; // already on its way
    this._stopped = false;
    this._paused = false;
    clearTimeout(this._retry);
    this._open();
    return this;
  };

  EventmillClient.prototype.close = function () {
    var ws = this._ws;
    this._stopped = true;
    this._paused = false;
    this._pending = false;
    this._generation += 1;
    this._ws = null; // its close event is not a drop to recover from
    clearTimeout(this._retry);
    clearTimeout(this._watchdog);
    if (ws) ws.close(1000, "client closed");
    this._setStatus("closed", { code: 1000, reason: "client closed" });
  };

  EventmillClient.prototype.subscribe = function (patterns, since) {
    var list = [].concat(patterns || []);
    var previous = this.events;
    this.events = (this.events || []).concat(list.filter(function (p) {
      return (this.events || []).indexOf(p) < 0;
    }, this));
    var message = { type: "subscribe", events: list };
    if (this._paused) {
      this._requests = {};
      // no socket while it wanted nothing: open one for these patterns, from the newest
      // event (or from `since`)
      this._paused = false;
      this.position = since != null ? since : null;
      if (!this._stopped) this._open();
      return;
    }
    var before = this.position;
    if (since != null) {
      // the replay covers the old patterns too: what they delivered is not handed out
      // twice (see _delivered)
      message.since = since;
      this.position = since;
    }
    this._request(message, previous, before);
  };

  EventmillClient.prototype.unsubscribe = function (patterns) {
    var list = [].concat(patterns || []);
    var previous = this.events;
    this.events = (this.events || ["*"]).filter(function (p) { return list.indexOf(p) < 0; });
    this._request({ type: "unsubscribe", events: list }, previous);
  };

  // A subscribe/unsubscribe the server refuses (an invalid pattern, too many) leaves the
  // patterns as they were, here as on the server, so a reconnect does not carry it.
  EventmillClient.prototype._request = function (message, previous, position) {
    message.id = "s" + this._nextId++;
    this._requests[message.id] = { events: previous, position: position };
    this.send(message);
  };

  EventmillClient.prototype.ping = function () { this.send({ type: "ping" }); };

  EventmillClient.prototype.send = function (message) {
    if (this._ws && this._ws.readyState === 1 && this.status === "open") {
      this._ws.send(JSON.stringify(message));
    } else if (this._ws && message.type !== "ping") {
      // the socket's address was built before this message: it is sent once the server
      // says "connected" (a later socket's address carries the patterns and position)
      this._outbox.push(message);
    }
  };

  EventmillClient.prototype._token = function () {
    var token = this.options.token;
    try {
      return Promise.resolve(typeof token === "function" ? token() : token);
    } catch (err) {
      return Promise.reject(err); // a throwing token function is retried like a rejection
    }
  };

  // Subscribed to nothing: no socket until `subscribe` (see the top).
  EventmillClient.prototype._pauseIfNothing = function () {
    if (!this.events || this.events.length !== 0) return false;
    this._pending = false;
    this._paused = true;
    this.position = null;
    this._setStatus("paused", { reason: "no subscriptions" });
    return true;
  };

  EventmillClient.prototype._open = function () {
    var self = this;
    var generation = this._generation;
    if (this._pauseIfNothing()) return;
    this._pending = true;
    this._setStatus("connecting", { attempt: this._attempt });
    this._token().then(function (token) {
      if (self._stopped || generation !== self._generation) return;
      self._pending = false;
      if (token && token === self._expiredToken) {
        // the token function gave the token the server just refused as expired
        self._stopped = true;
        self._setStatus("failed", { code: 4002, reason: "token_expired", error: self._lastError });
        return;
      }
      if (self._pauseIfNothing()) return; // unsubscribed from everything meanwhile
      self._sentToken = token;
      self._outbox = [];
      self._requests = {};
      var url = new URL(self.url, root.location ? root.location.href : undefined);
      if (token) url.searchParams.set("token", token);
      if (self.position != null) url.searchParams.set("since", String(self.position));
      else if (self.options.recent) url.searchParams.set("recent", String(self.options.recent));
      if (self.events) url.searchParams.set("events", self.events.join(","));
      if (url.toString().length > MAX_URL) {
        // a server refuses such an address (414) before any WebSocket: retrying cannot help
        self._stopped = true;
        self._setStatus("failed", { reason: "too_many_patterns", error: { message:
          "the patterns make the address longer than " + MAX_URL + " characters; " +
          "subscribe to fewer or shorter ones" } });
        return;
      }
      var ws = new root.WebSocket(url.toString());
      self._ws = ws;
      ws.onopen = function () { if (ws === self._ws) self._arm(); };
      ws.onmessage = function (e) { if (ws === self._ws) self._message(JSON.parse(e.data)); };
      ws.onclose = function (e) { if (ws === self._ws) self._closed(e.code, e.reason); };
    }, function (err) {
      if (self._stopped || generation !== self._generation) return;
      self._pending = false;
      self._lastError = err;
      self._setStatus("closed", { error: err });
      self._schedule();
    });
  };

  EventmillClient.prototype._message = function (m) {
    this._arm();
    switch (m.type) {
      case "connected":
        this._attempt = 0;
        this._expiredToken = null;
        if (m.heartbeat_seconds) this._heartbeat = m.heartbeat_seconds;
        if (m.position != null && this.position == null) this.position = m.position;
        this._setStatus("open", m);
        var outbox = this._outbox;
        this._outbox = [];
        for (var i = 0; i < outbox.length; i++) this.send(outbox[i]);
        break;
      case "event":
        if (m.position != null) {
          if (this._delivered.has(m.position)) break; // handed out already
          this._remember(m.position);
        }
        if (this.position == null || m.position > this.position) this.position = m.position;
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
      case "subscribed":
      case "unsubscribed":
        if (m.id != null && m.id in this._requests) delete this._requests[m.id];
        if (this.options.onMessage) this.options.onMessage(m);
        break;
      case "error":
        if (m.id != null && m.id in this._requests) {
          // refused: the patterns, and the position to resume from, stay as they were
          var request = this._requests[m.id];
          delete this._requests[m.id];
          this.events = request.events;
          if (request.position != null && (this.position == null || request.position > this.position)) {
            this.position = request.position;
          }
        }
        this._lastError = m;
        if (this.options.onError) this.options.onError(m);
        break;
      default:
        if (this.options.onMessage) this.options.onMessage(m);
    }
  };

  EventmillClient.prototype._remember = function (position) {
    this._delivered.add(position);
    if (this._delivered.size > DELIVERED_MAX) {
      this._delivered.delete(this._delivered.values().next().value); // the oldest
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
    if (code === 4002) this._expiredToken = this._sentToken;
    if (code === 4009) {
      var info = { since: this.position, code: code, reason: reason, error: this._lastError };
      this.position = null; // start afresh: the app reloads its state
      if (this.options.onGap) this.options.onGap(info);
    }
    if ((code === 4008 || code === 4009 || code === 4002) && this._attempt === 0) {
      // at once: resume (4008), afresh (4009), with a new token (4002); once, until the
      // server says "connected" again (then backoff)
      this._attempt = 1;
      this._open();
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
