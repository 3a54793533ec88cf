// The meeting page: the WebSocket meeting protocol (docs/protocol.md), no build step.
//
// One RTCPeerConnection carries this participant's sendonly tracks (camera,
// microphone, screen) and one recvonly transceiver per track of the others.
// The page always offers; every offer tells the server which published track
// each recvonly mid should carry ("subscriptions"). The server is ICE-lite and
// puts its candidate in the answer: no STUN/TURN server, no trickle ICE.
//
// For automation: ?room=R&name=N&autojoin=1 joins on load (&camera=0, &mic=0
// to join without them; &token=T to use a given token). window.meetingState
// reports {status, joined, participantId, meetingId, participants, error, ended,
// recording, mutedByHost} and window.meetingStats() resolves to what is received from each
// participant. A host (the server says so in permissions: the token's host grant, never
// coming first) sees a "Mute" button on every other participant's tile and "End meeting".
// "View history meetings" (join screen) lists the meetings of the identity in the token
// (the token field, ?token=, or the last join's) from GET /api/me/meetings: only one's own
// times; a meeting one created adds its attendance export. window.meetingHistory reports
// {status, identity, meetings, error, exported}.
// The connection indicator shows the server's connection_quality event (protocol 5.3):
// the level (good, fair, poor) and the reason ("your uplink loses 8% of packets");
// window.meetingState.quality is {level, reason} (level "unknown" until the server knows).
// Recording by the SFU (protocol: recording_start/stop/ack): a host sees "Start recording";
// every page shows the banner when recording_changed says so and then acknowledges the
// notice (recording_ack), which the server waits for before it records anything.
// window.meetingState.recordingShown is the time (ms since the epoch) the banner was shown
// for the last notice, recordingStopped the reason the last recording stopped.
"use strict";

(() => {
  const params = new URLSearchParams(window.location.search);
  // Always the SFU that served this page: camera and microphone never go to a
  // server named in a link (there is no ?server= parameter).
  const server = window.location.origin;
  const RTC_CONFIG = { iceServers: [], bundlePolicy: "max-bundle" };
  const PING_INTERVAL_MS = 25000;
  const CLOSE_MESSAGES = {
    4000: "The meeting has ended.",
    4001: "You were removed from the meeting.",
    4002: "The server stopped.",
    4003: "The connection was too slow.",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("join-form"), room: $("room"), name: $("name"), tokenField: $("token-field"), token: $("token"),
    join: $("join"), controls: $("controls"), camera: $("camera"), microphone: $("microphone"),
    screen: $("screen"), leave: $("leave"), end: $("end"), notice: $("notice"), tiles: $("tiles"),
    info: $("meeting-info"), recording: $("recording"), quality: $("quality"), record: $("record"),
    history: $("history"), historyOpen: $("history-open"), historyClose: $("history-close"),
    historyStatus: $("history-status"), historyTable: $("history-table"), historyRows: $("history-rows"),
  };

  const state = { status: "idle", joined: false, participantId: null, participants: 0, error: null, ended: null,
    recording: false, mutedByHost: 0, quality: { level: "unknown", reason: null } };
  window.meetingState = state;

  let ws = null;
  let pc = null;
  let nextId = 1;
  const pending = new Map(); // request id -> {resolve, reject}
  const people = new Map(); // participant id -> {id, name, tracks: Map(track id -> track), tile}
  const local = {}; // source -> {track, transceiver, trackId, muted}
  const receivers = []; // {transceiver, kind, trackId|null}
  let localStream = null;
  let pingTimer = null;
  let leaving = false;
  let negotiation = null; // the running negotiation loop (a promise)
  let negotiateAgain = false;
  let lastToken = null; // the token of the last join here: whose history "View history meetings" shows

  // ---- notices and state --------------------------------------------------------------
  function notice(text, kind = "") {
    ui.notice.textContent = text;
    ui.notice.className = kind;
  }

  function fail(err) {
    const message = err && err.message ? err.message : String(err);
    state.error = message;
    notice("Error: " + message, "error");
    console.error("meeting:", err);
  }

  function setStatus(status) {
    state.status = status;
    state.participants = people.size + (state.joined ? 1 : 0);
  }

  // ---- tiles -------------------------------------------------------------------------
  function makeTile(key, label, isLocal) {
    const figure = document.createElement("figure");
    figure.className = "tile" + (isLocal ? " local" : "");
    figure.dataset.key = key;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true; // audio plays through the <audio> elements
    const caption = document.createElement("figcaption");
    caption.textContent = label; // never innerHTML: names come from other people
    figure.append(video, caption);
    ui.tiles.append(figure);
    return figure;
  }

  function personTile(person, source) {
    // the camera (and audio) go to the person's tile, a screen share gets its own
    const key = source === "screen" ? `${person.id}:screen` : person.id;
    let tile = ui.tiles.querySelector(`figure[data-key="${CSS.escape(key)}"]`);
    if (!tile) {
      const label = person.via ? `${person.name} (${person.via.toUpperCase()})` : person.name;
      tile = makeTile(key, source === "screen" ? `${person.name} (screen)` : label, false);
      if (source !== "screen" && state.canMuteOthers) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "host-mute";
        button.addEventListener("click", () => {
          button.disabled = true;
          request("mute_participant", { participant_id: person.id, kind: "audio" })
            .catch((err) => { button.disabled = false; fail(err); });
        });
        tile.append(button);
      }
    }
    if (source !== "screen") updateMuteButton(person, tile);
    return tile;
  }

  function updateMuteButton(person, tile) {
    // a host's "Mute": only while the person has an unmuted microphone (they unmute themselves)
    const button = tile.querySelector("button.host-mute");
    if (!button) return;
    const audio = [...person.tracks.values()].filter((t) => t.kind === "audio" && t.source !== "screen-audio");
    const live = audio.some((t) => !t.muted);
    button.disabled = !live;
    button.textContent = audio.length && !live ? "Muted" : "Mute";
    button.title = live ? `Mute ${person.name} for everyone` : "";
  }

  const QUALITY_WORDS = { good: "Connection: good", fair: "Connection: fair", poor: "Connection: poor" };

  function showQuality(level, reason) {
    state.quality = { level, reason: reason || null };
    ui.quality.dataset.level = level;
    ui.quality.hidden = !QUALITY_WORDS[level];
    ui.quality.querySelector(".level").textContent = QUALITY_WORDS[level] || "";
    ui.quality.querySelector(".reason").textContent = reason ? ` \u2014 ${reason}` : "";
  }

  function showRecording(on, ev = null) {
    state.recording = on;
    ui.recording.hidden = !on;
    if (on) {
      ui.recording.querySelector(".text").textContent = ev && ev.source === "sfu"
        ? "This meeting is being recorded by the server." : "This meeting is being recorded.";
      state.recordingShown = Date.now();
    }
    if (ev && ev.source === "sfu") {
      state.sfuRecording = on;
      ui.record.textContent = on ? "Stop recording" : "Start recording";
      ui.record.setAttribute("aria-pressed", String(on));
      ui.record.disabled = false;
      if (on && ev.notice) {
        // shown (the DOM is updated): now tell the server, which records nothing before this
        setTimeout(() => request("recording_ack", { notice: ev.notice }).catch(() => {}), 0);
      }
      if (!on && ev.reason) {
        state.recordingStopped = ev.reason;
        notice(ev.reason === "disk_full" ? "The recording stopped: the server's disk is full. The meeting goes on."
          : ev.reason === "stopped" ? "The recording stopped." : `The recording stopped (${ev.reason}).`);
      }
    }
  }

  function removeTiles(personId) {
    for (const tile of ui.tiles.querySelectorAll("figure")) {
      if (tile.dataset.key === personId || tile.dataset.key.startsWith(personId + ":")) tile.remove();
    }
  }

  function showRemoteTrack(receiver) {
    const owner = ownerOf(receiver.trackId);
    if (!owner) return;
    const { person, track } = owner;
    const media = receiver.transceiver.receiver.track;
    const tile = personTile(person, track.source);
    if (track.kind === "video") {
      const video = tile.querySelector("video");
      if (!video.srcObject || video.srcObject.getVideoTracks()[0] !== media) {
        video.srcObject = new MediaStream([media]);
      }
      tile.classList.toggle("video-off", track.muted);
    } else {
      let audio = tile.querySelector(`audio[data-track="${CSS.escape(track.id)}"]`);
      if (!audio) {
        audio = document.createElement("audio");
        audio.autoplay = true;
        audio.dataset.track = track.id;
        tile.append(audio);
      }
      audio.srcObject = new MediaStream([media]);
      tile.querySelector("figcaption").classList.toggle("muted-audio", track.muted);
    }
  }

  function ownerOf(trackId) {
    for (const person of people.values()) {
      const track = person.tracks.get(trackId);
      if (track) return { person, track };
    }
    return null;
  }

  // ---- requests ----------------------------------------------------------------------
  function request(type, fields = {}) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return reject(new Error("not connected"));
      const id = nextId++;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ id, type, ...fields }));
    });
  }

  function onMessage(raw) {
    const message = JSON.parse(raw.data);
    if (message.type === "response") {
      const waiter = pending.get(message.id);
      if (!waiter) return;
      pending.delete(message.id);
      if (message.ok) waiter.resolve(message);
      else waiter.reject(new Error(message.error || "request failed"));
    } else if (message.type === "event") {
      const handler = EVENTS[message.event];
      if (handler) handler(message);
      if (window.meetingChat) window.meetingChat.event(message);  // chat and polls (meeting-chat.js)
    }
  }

  // ---- events from the server ------------------------------------------------------------
  const EVENTS = {
    participant_joined(ev) {
      addPerson(ev.participant);
      setStatus(state.status);
    },
    participant_left(ev) {
      const person = people.get(ev.participant_id);
      if (!person) return;
      for (const trackId of person.tracks.keys()) releaseReceiver(trackId);
      people.delete(ev.participant_id);
      removeTiles(ev.participant_id);
      setStatus(state.status);
    },
    track_published(ev) {
      const person = people.get(ev.participant_id);
      if (!person) return;
      person.tracks.set(ev.track.id, ev.track);
      personTile(person, ev.track.source);
      scheduleNegotiation();
    },
    tracks_published(ev) {  // a burst of track_published, merged by the server
      for (const track of ev.tracks) EVENTS.track_published({ participant_id: ev.participant_id, track });
    },
    tracks_unpublished(ev) {
      for (const trackId of ev.track_ids) EVENTS.track_unpublished({ participant_id: ev.participant_id, track_id: trackId });
    },
    track_unpublished(ev) {
      const person = people.get(ev.participant_id);
      if (!person) return;
      const track = person.tracks.get(ev.track_id);
      person.tracks.delete(ev.track_id);
      releaseReceiver(ev.track_id);
      personTile(person, "camera");
      if (track && track.source === "screen") {
        const tile = ui.tiles.querySelector(`figure[data-key="${CSS.escape(person.id + ":screen")}"]`);
        if (tile) tile.remove();
      } else if (track && track.kind === "video") {
        const tile = personTile(person, track.source);
        tile.querySelector("video").srcObject = null;
      }
      scheduleNegotiation();
    },
    mute_changed(ev) {
      const person = people.get(ev.participant_id);
      const track = person && person.tracks.get(ev.track_id);
      if (!track) return;
      track.muted = ev.muted;
      const tile = personTile(person, track.source);
      if (track.kind === "video") tile.classList.toggle("video-off", ev.muted);
      else tile.querySelector("figcaption").classList.toggle("muted-audio", ev.muted);
      if (track.source !== "screen") updateMuteButton(person, personTile(person, "camera"));
    },
    muted_by_host(ev) {
      // the server holds these tracks until we unmute them ourselves: show them as off here too
      for (const [source, entry] of Object.entries(local)) {
        if (!entry.trackId || !ev.track_ids.includes(entry.trackId) || !entry.track) continue;
        entry.muted = true;
        entry.track.enabled = false;
        const button = source === "camera" ? ui.camera : source === "microphone" ? ui.microphone : null;
        if (button) {
          button.textContent = source === "camera" ? "Camera off" : "Microphone off";
          button.setAttribute("aria-pressed", "false");
        }
        if (source === "camera") ui.tiles.querySelector('figure[data-key="local"]').classList.add("video-off");
      }
      state.mutedByHost += 1;
      const what = ev.kind === "video" ? "camera" : "microphone";
      notice(`${ev.by ? ev.by.name : "A host"} turned off your ${what}. Turn it back on when you want.`);
    },
    recording_changed(ev) {
      showRecording(Boolean(ev.recording), ev);
    },
    connection_quality(ev) {
      showQuality(String(ev.level), typeof ev.reason === "string" ? ev.reason : null);
    },
    meeting_ended(ev) {
      state.ended = ev.reason || "ended";
      notice(`The meeting has ended (${ev.reason}).`, "ended");
    },
    kicked() {
      state.ended = "kicked";
      notice("You were removed from the meeting.", "ended");
    },
    server_stopping() {
      notice("The server is stopping.", "error");
    },
    media_closed(ev) {
      fail(new Error(`media connection closed (${ev.reason})`));
      leave();
    },
  };

  function addPerson(info) {
    const person = { id: info.id, name: info.name, via: info.via || null, tracks: new Map() };
    for (const track of info.tracks || []) person.tracks.set(track.id, track);
    people.set(person.id, person);
    personTile(person, "camera");
    return person;
  }

  // ---- negotiation (the client always offers) -----------------------------------------------
  function scheduleNegotiation() {
    negotiateAgain = true;
    if (!negotiation) {
      negotiation = (async () => {
        try {
          while (negotiateAgain && pc && state.joined) {
            negotiateAgain = false;
            await negotiateOnce();
          }
        } catch (err) {
          if (state.joined) fail(err);
        } finally {
          negotiation = null;
        }
      })();
    }
    return negotiation;
  }

  function releaseReceiver(trackId) {
    for (const r of receivers) if (r.trackId === trackId) r.trackId = null;
  }

  async function negotiateOnce() {
    // every track of the others is received (subscribe to all): reuse idle sections first
    const wanted = [];
    for (const person of people.values()) {
      for (const track of person.tracks.values()) {
        if (!receivers.some((r) => r.trackId === track.id)) wanted.push(track);
      }
    }
    if (state.canSubscribe) {
      for (const track of wanted) {
        let receiver = receivers.find((r) => r.trackId === null && r.kind === track.kind);
        if (!receiver) {
          const transceiver = pc.addTransceiver(track.kind, { direction: "recvonly" });
          receiver = { transceiver, kind: track.kind, trackId: null };
          receivers.push(receiver);
        }
        receiver.trackId = track.id;
      }
    }
    if (!pc.getTransceivers().length) return; // nothing to send or receive yet
    await pc.setLocalDescription(await pc.createOffer());
    const subscriptions = {};
    for (const r of receivers) if (r.transceiver.mid !== null) subscriptions[r.transceiver.mid] = r.trackId;
    const tracks = {};
    for (const [source, entry] of Object.entries(local)) {
      if (entry.transceiver.mid !== null) tracks[entry.transceiver.mid] = { source, muted: entry.muted };
    }
    const response = await request("offer", { sdp: pc.localDescription.sdp, tracks, subscriptions });
    await pc.setRemoteDescription({ type: "answer", sdp: response.sdp });
    for (const entry of Object.values(local)) {
      entry.trackId = response.published[entry.transceiver.mid] || null;
    }
    for (const r of receivers) {
      if (r.trackId !== null) showRemoteTrack(r);
    }
  }

  // ---- joining and leaving -------------------------------------------------------------------
  async function accessToken(room, name) {
    const given = params.get("token") || ui.token.value.trim();
    if (given) return given;
    // --dev: the last dev token keeps this page the same person across rooms (own history)
    const headers = { "Content-Type": "application/json" };
    if (lastToken) headers.Authorization = `Bearer ${lastToken}`;
    const response = await fetch(`${server}/api/dev/token`, {
      method: "POST",
      headers,
      body: JSON.stringify({ room, name }),
    });
    if (response.status !== 200) {
      ui.tokenField.hidden = false;
      throw new Error(`this server needs an access token (sfu token --room ${room} --name ... --publish --subscribe, and --host for a host)`);
    }
    return (await response.json()).token;
  }

  function openSocket(token) {
    const url = server.replace(/^http/, "ws") + "/ws?token=" + encodeURIComponent(token);
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.onopen = () => resolve(socket);
      socket.onerror = () => reject(new Error("could not connect (is the access token valid for this room?)"));
    });
  }

  async function join() {
    const room = ui.room.value.trim();
    const name = ui.name.value.trim();
    if (!room || !name) throw new Error("enter a room and your name");
    ui.join.disabled = true;
    state.error = null;
    state.ended = null;
    leaving = false;
    notice("Joining…");
    setStatus("joining");
    const token = await accessToken(room, name);
    lastToken = token;
    ui.history.hidden = true;
    ws = await openSocket(token);
    ws.onmessage = onMessage;
    ws.onclose = onClose;
    const joined = await request("join", { batch_events: true });  // bursts come merged (protocol 5.1)
    state.joined = true;
    state.participantId = joined.participant_id;
    state.meetingId = joined.meeting.id;
    state.canSubscribe = joined.permissions.subscribe;
    state.canMuteOthers = Boolean(joined.permissions.mute_others);
    const topic = joined.meeting.topic ? ` — ${joined.meeting.topic}` : "";
    ui.info.textContent = `Room ${joined.meeting.room}, meeting ${joined.meeting.id}${topic}`;
    ui.form.hidden = true;
    ui.controls.hidden = false;
    ui.end.hidden = !joined.permissions.end_meeting;
    ui.record.hidden = !joined.permissions.record;
    showRecording(Boolean(joined.recording), joined.sfu_recording
      ? { recording: true, source: "sfu", ...joined.sfu_recording } : null);
    notice("");
    const me = makeTile("local", `${joined.name} (you)`, true);
    for (const info of joined.participants) addPerson(info);
    if (window.meetingChat) window.meetingChat.start(joined, { request, people });
    pingTimer = setInterval(() => request("ping").catch(() => {}), PING_INTERVAL_MS);

    pc = new RTCPeerConnection(RTC_CONFIG);
    pc.addEventListener("connectionstatechange", () => {
      if (pc && pc.connectionState === "failed") fail(new Error("media connection failed"));
    });
    if (joined.permissions.publish) {
      await startLocalMedia(me);
    } else {
      ui.camera.disabled = ui.microphone.disabled = ui.screen.disabled = true;
    }
    if (!pc) return;
    setStatus("joined");
    await scheduleNegotiation();
  }

  async function startLocalMedia(tile) {
    const wantVideo = params.get("camera") !== "0";
    const wantAudio = params.get("mic") !== "0";
    if (!wantVideo && !wantAudio) return;
    try {
      localStream = await navigator.mediaDevices.getUserMedia({
        audio: wantAudio,
        video: wantVideo ? { width: { ideal: 640 }, height: { ideal: 360 } } : false,
      });
    } catch (err) {
      notice(`No camera or microphone (${err.name}); you can still see and hear the others.`, "error");
      return;
    }
    if (!pc) { // the meeting ended (or we left) while the camera was opening
      for (const track of localStream.getTracks()) track.stop();
      localStream = null;
      return;
    }
    tile.querySelector("video").srcObject = localStream;
    for (const track of localStream.getTracks()) {
      const source = track.kind === "audio" ? "microphone" : "camera";
      const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [localStream] });
      local[source] = { track, transceiver, trackId: null, muted: false };
    }
    ui.camera.disabled = !local.camera;
    ui.microphone.disabled = !local.microphone;
  }

  async function toggle(source, button, onText, offText) {
    const entry = local[source];
    if (!entry) return;
    entry.muted = !entry.muted;
    entry.track.enabled = !entry.muted;
    button.textContent = entry.muted ? offText : onText;
    button.setAttribute("aria-pressed", String(!entry.muted));
    if (source === "camera") ui.tiles.querySelector('figure[data-key="local"]').classList.toggle("video-off", entry.muted);
    if (entry.trackId) await request("mute", { track_id: entry.trackId, muted: entry.muted });
  }

  async function toggleScreen() {
    const entry = local.screen;
    if (entry && entry.track) { // stop sharing: the section goes inactive, the server unpublishes it
      entry.track.onended = null;
      entry.track.stop();
      await entry.transceiver.sender.replaceTrack(null);
      entry.transceiver.direction = "inactive";
      entry.track = null;
      ui.screen.textContent = "Share screen";
      ui.screen.setAttribute("aria-pressed", "false");
      const tile = ui.tiles.querySelector('figure[data-key="local:screen"]');
      if (tile) tile.remove();
      await scheduleNegotiation();
      return;
    }
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = stream.getVideoTracks()[0];
    if (entry) { // reuse the section of an earlier share
      await entry.transceiver.sender.replaceTrack(track);
      entry.transceiver.direction = "sendonly";
      entry.track = track;
    } else {
      local.screen = { track, transceiver: pc.addTransceiver(track, { direction: "sendonly" }), trackId: null, muted: false };
    }
    track.onended = () => toggleScreen().catch(fail); // "Stop sharing" in the browser's own UI
    makeTile("local:screen", "Your screen", true).querySelector("video").srcObject = stream;
    ui.screen.textContent = "Stop sharing";
    ui.screen.setAttribute("aria-pressed", "true");
    await scheduleNegotiation();
  }

  function onClose(ev) {
    const why = CLOSE_MESSAGES[ev.code];
    if (!leaving) {
      if (why) notice(why, "ended");
      else if (!state.error) notice("The connection to the server was lost.", "error");
      if (ev.code === 4000 && !state.ended) state.ended = "ended";
    }
    cleanup();
  }

  function cleanup() {
    state.joined = false;
    clearInterval(pingTimer);
    for (const waiter of pending.values()) waiter.reject(new Error("disconnected"));
    pending.clear();
    if (pc) pc.close();
    pc = null;
    if (localStream) for (const track of localStream.getTracks()) track.stop();
    if (local.screen && local.screen.track) local.screen.track.stop();
    localStream = null;
    for (const key of Object.keys(local)) delete local[key];
    receivers.length = 0;
    people.clear();
    if (window.meetingChat) window.meetingChat.stop();
    ui.tiles.replaceChildren();
    ui.form.hidden = false;
    ui.controls.hidden = true;
    ui.join.disabled = false;
    ui.camera.textContent = "Camera on";
    ui.microphone.textContent = "Microphone on";
    ui.screen.textContent = "Share screen";
    showRecording(false);
    showQuality("unknown", null);
    setStatus(state.ended ? "ended" : "idle");
  }

  async function leave() {
    leaving = true;
    if (ws && ws.readyState === WebSocket.OPEN) {
      try { await request("leave"); } catch (err) { /* closing anyway */ }
      ws.close(1000, "left");
    }
    if (!state.error && !state.ended) notice("You left the meeting.");
    cleanup();
  }

  // ---- statistics for people and for automation ---------------------------------------------
  window.meetingStats = async () => {
    const out = { participants: {}, videoFramesDecoded: 0, audioPacketsReceived: 0, connection: pc ? pc.connectionState : "closed" };
    for (const r of receivers) {
      if (!r.trackId) continue;
      const owner = ownerOf(r.trackId);
      if (!owner) continue;
      const entry = out.participants[owner.person.id] ||= { name: owner.person.name, video: 0, audio: 0, frameWidth: 0, sources: {} };
      const report = await r.transceiver.receiver.getStats();
      report.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        if (s.kind === "video") {
          entry.video += s.framesDecoded || 0;
          entry.sources[owner.track.source] = (entry.sources[owner.track.source] || 0) + (s.framesDecoded || 0);
          entry.frameWidth = Math.max(entry.frameWidth, s.frameWidth || 0);
          out.videoFramesDecoded += s.framesDecoded || 0;
        } else {
          entry.audio += s.packetsReceived || 0;
          out.audioPacketsReceived += s.packetsReceived || 0;
        }
      });
    }
    return out;
  };

  // ---- own history ("View history meetings") ------------------------------------------------
  const ownHistory = { status: "closed", meetings: [], error: null, exported: null };
  window.meetingHistory = ownHistory;

  function formatDuration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function timeCell(iso, fallback) {
    const td = document.createElement("td");
    if (!iso) { td.textContent = fallback; return td; }
    const time = document.createElement("time");
    time.dateTime = iso;
    time.textContent = new Date(iso).toLocaleString();
    td.append(time);
    return td;
  }

  async function download(entry, format, token) {
    // fetched with the token in a header (never in a link), saved from a blob
    const response = await fetch(server + entry.attendance[`export_${format}`],
      { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new Error(`export failed (${response.status})`);
    const blob = await response.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `meeting-${entry.meeting_id}.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    ownHistory.exported = { meetingId: entry.meeting_id, format, bytes: blob.size, text: await blob.text() };
  }

  function historyRow(entry, token) {
    const tr = document.createElement("tr");
    tr.dataset.meetingId = entry.meeting_id;
    const topic = document.createElement("td");
    topic.textContent = entry.topic || "(no topic)"; // never innerHTML: topics come from people
    const id = document.createElement("td");
    id.textContent = entry.meeting_id;
    const duration = document.createElement("td");
    duration.className = "duration";
    duration.textContent = formatDuration(entry.duration_seconds);
    if (entry.sessions.length > 1) duration.textContent += ` (${entry.sessions.length} sessions)`;
    const exports = document.createElement("td");
    if (entry.creator && entry.attendance) {
      for (const format of ["csv", "json"]) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "export";
        button.dataset.format = format;
        button.textContent = `Export ${format.toUpperCase()}`;
        button.addEventListener("click", () => download(entry, format, token).catch((err) => {
          ownHistory.error = err.message;
          ui.historyStatus.textContent = "Error: " + err.message;
        }));
        exports.append(button);
      }
    } else {
      exports.textContent = "—";
    }
    tr.append(topic, id, timeCell(entry.joined_at, "—"), timeCell(entry.left_at, "still in it"), duration, exports);
    return tr;
  }

  async function showHistory() {
    ui.history.hidden = false;
    ui.historyTable.hidden = true;
    ui.historyRows.replaceChildren();
    ownHistory.error = null;
    const token = params.get("token") || ui.token.value.trim() || lastToken;
    if (!token) {
      ownHistory.status = "no token";
      ui.tokenField.hidden = false;
      ui.historyStatus.textContent = "Join a meeting first, or enter your access token, to see your meetings.";
      return;
    }
    ownHistory.status = "loading";
    ui.historyStatus.textContent = "Loading…";
    const response = await fetch(`${server}/api/me/meetings`, { headers: { Authorization: `Bearer ${token}` } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `history unavailable (${response.status})`);
    ownHistory.meetings = body.meetings;
    ownHistory.identity = body.identity;
    for (const entry of body.meetings) ui.historyRows.append(historyRow(entry, token));
    ui.historyTable.hidden = body.meetings.length === 0;
    ui.historyStatus.textContent = body.meetings.length ? "Only your own times are shown; "
      + "the meetings you created have their attendance export." : "You have not attended any meeting yet.";
    ownHistory.status = "shown";
  }

  // ---- wiring -------------------------------------------------------------------------------
  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    join().catch((err) => {
      if (state.ended || leaving) return; // ended or left while joining: already reported
      fail(err);
      if (ws) ws.close();
      cleanup();
    });
  });
  ui.camera.addEventListener("click", () => toggle("camera", ui.camera, "Camera on", "Camera off").catch(fail));
  ui.microphone.addEventListener("click", () => toggle("microphone", ui.microphone, "Microphone on", "Microphone off").catch(fail));
  ui.screen.addEventListener("click", () => toggleScreen().catch(fail));
  ui.leave.addEventListener("click", () => leave().catch(fail));
  ui.end.addEventListener("click", () => request("end_meeting").catch(fail));
  ui.record.addEventListener("click", () => {
    ui.record.disabled = true;  // until recording_changed says what happened
    request(state.sfuRecording ? "recording_stop" : "recording_start")
      .catch((err) => { ui.record.disabled = false; fail(err); });
  });
  ui.historyOpen.addEventListener("click", () => showHistory().catch((err) => {
    ownHistory.status = "error";
    ownHistory.error = err.message;
    ui.historyStatus.textContent = "Error: " + err.message;
  }));
  ui.historyClose.addEventListener("click", () => { ui.history.hidden = true; ownHistory.status = "closed"; });
  window.addEventListener("pagehide", () => { if (ws) ws.close(1001, "page closed"); });

  if (params.get("room")) ui.room.value = params.get("room");
  if (params.get("name")) ui.name.value = params.get("name");
  if (params.get("token")) ui.tokenField.hidden = false, ui.token.value = params.get("token");
  if (params.get("autojoin") === "1") ui.form.requestSubmit();
})();
