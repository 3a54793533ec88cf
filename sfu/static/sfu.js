// The SFU test page: publish with WHIP, play with WHEP (RFC 9725), no build step.
//
// The server is ICE-lite and puts its host candidate in the answer, so the
// client needs no STUN/TURN server and does no trickle ICE: it waits for its
// own gathering to finish, POSTs the complete offer and applies the answer.
//
// For automation: ?room=R&publish=1 or ?room=R&play=1 start on load,
// window.sfuState reports {publishing, playing, error, status} and
// window.sfuStats() resolves to counters read from RTCPeerConnection.getStats().
"use strict";

(() => {
  const params = new URLSearchParams(window.location.search);
  // Always the SFU that served this page: camera and microphone never go to a
  // server named in a link (there is no ?server= parameter).
  const server = window.location.origin;
  const RTC_CONFIG = { iceServers: [], bundlePolicy: "max-bundle" };
  const GATHER_TIMEOUT_MS = 2000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    room: $("room"), token: $("token"), publish: $("publish"), play: $("play"), stop: $("stop"),
    status: $("status"), local: $("local"), remote: $("remote"), stats: $("stats"),
  };

  const state = { publishing: false, playing: false, error: null, status: "idle" };
  window.sfuState = state;

  // One session per direction: {pc, location, token, stream}.
  const sessions = { publish: null, play: null };
  let statsTimer = null;

  function setStatus(text, kind = "") {
    state.status = text;
    ui.status.textContent = text;
    ui.status.className = kind;
  }

  function fail(err) {
    const message = err && err.message ? err.message : String(err);
    state.error = message;
    setStatus("Error: " + message, "error");
    console.error("sfu:", err);
  }

  function refreshButtons() {
    ui.publish.disabled = sessions.publish !== null;
    ui.play.disabled = sessions.play !== null;
    ui.stop.disabled = sessions.publish === null && sessions.play === null;
    ui.room.disabled = !ui.stop.disabled;
  }

  function roomName() {
    const room = ui.room.value.trim();
    if (!room) throw new Error("enter a room name");
    return room;
  }

  function waitForGathering(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(done, GATHER_TIMEOUT_MS);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
      function check() {
        if (pc.iceGatheringState === "complete") done();
      }
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // An access token: ?token=, the token field, or (sfu serve --dev only) one the
  // server mints for the room.
  async function accessToken(room) {
    const given = params.get("token") || (ui.token ? ui.token.value.trim() : "");
    if (given) return given;
    const response = await fetch(`${server}/api/dev/token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ room, name: "guest" }),
    });
    if (response.status !== 200) {
      throw new Error("enter an access token (made with: sfu token --room " + room + " --publish --subscribe)");
    }
    return (await response.json()).token;
  }

  // WHIP/WHEP: POST the offer, 201 Created with the answer and a Location to DELETE
  // (with the same token). Resolves to {location, token}.
  async function negotiate(pc, url, room) {
    const token = await accessToken(room);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", "Authorization": `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const body = await response.text();
    if (response.status !== 201) {
      throw new Error(`POST ${url}: ${response.status} ${body.trim().slice(0, 200)}`);
    }
    const location = response.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: body });
    return { location: location ? new URL(location, url).href : null, token };
  }

  function watchConnection(pc, label) {
    pc.addEventListener("connectionstatechange", () => {
      const s = pc.connectionState;
      if (s === "connected") setStatus(`${label}: connected.`, "ok");
      else if (s === "failed") fail(new Error(`${label}: connection failed`));
      else setStatus(`${label}: ${s}.`);
    });
  }

  async function publish() {
    if (sessions.publish) return;
    state.error = null;
    const session = { pc: null, location: null, token: null, stream: null };
    sessions.publish = session;
    refreshButtons();
    try {
      const room = roomName();
      setStatus("Publishing: asking for camera and microphone…");
      session.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      ui.local.srcObject = session.stream;
      const pc = (session.pc = new RTCPeerConnection(RTC_CONFIG));
      watchConnection(pc, "Publishing");
      for (const track of session.stream.getTracks()) {
        pc.addTransceiver(track, { direction: "sendonly", streams: [session.stream] });
      }
      setStatus("Publishing: negotiating…");
      Object.assign(session, await negotiate(pc, `${server}/whip/${encodeURIComponent(room)}`, room));
      state.publishing = true;
      startStats();
    } catch (err) {
      fail(err);
      await endSession("publish");
    }
  }

  async function play() {
    if (sessions.play) return;
    state.error = null;
    const session = { pc: null, location: null, token: null, stream: new MediaStream() };
    sessions.play = session;
    refreshButtons();
    try {
      const room = roomName();
      const pc = (session.pc = new RTCPeerConnection(RTC_CONFIG));
      watchConnection(pc, "Playing");
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addEventListener("track", (event) => {
        session.stream.addTrack(event.track);
        if (ui.remote.srcObject !== session.stream) ui.remote.srcObject = session.stream;
        startPlayback();
      });
      setStatus("Playing: negotiating…");
      Object.assign(session, await negotiate(pc, `${server}/whep/${encodeURIComponent(room)}`, room));
      state.playing = true;
      startStats();
    } catch (err) {
      fail(err);
      await endSession("play");
    }
  }

  // Play with sound when allowed (a click), muted otherwise (autoplay policy).
  function startPlayback() {
    ui.remote.muted = false;
    ui.remote.play().catch(() => {
      ui.remote.muted = true;
      return ui.remote.play();
    }).catch(() => {});
  }

  async function endSession(kind) {
    const session = sessions[kind];
    if (!session) return;
    sessions[kind] = null;
    if (kind === "publish") {
      state.publishing = false;
      ui.local.srcObject = null;
    } else {
      state.playing = false;
      ui.remote.srcObject = null;
    }
    refreshButtons();
    if (session.location) {
      try {
        // the session's own token ends it (RFC 9725 §4.2; the SFU checks the identity)
        await fetch(session.location, { method: "DELETE", headers: { "Authorization": `Bearer ${session.token}` } });
      } catch (err) {
        console.warn("sfu: DELETE failed", err);
      }
    }
    if (session.pc) session.pc.close();
    if (session.stream) session.stream.getTracks().forEach((t) => t.stop());
  }

  async function stop() {
    await Promise.all([endSession("publish"), endSession("play")]);
    stopStats();
    if (!state.error) setStatus("Stopped.");
  }

  async function reportsOf(session) {
    if (!session || !session.pc) return [];
    const report = await session.pc.getStats();
    return Array.from(report.values());
  }

  window.sfuStats = async () => {
    const out = {
      publishConnection: sessions.publish && sessions.publish.pc ? sessions.publish.pc.connectionState : null,
      playConnection: sessions.play && sessions.play.pc ? sessions.play.pc.connectionState : null,
      // publisher side (outbound-rtp)
      framesEncoded: 0, framesSent: 0, packetsSent: 0, bytesSent: 0,
      audioPacketsSent: 0, videoPacketsSent: 0, nackReceived: 0, pliReceived: 0,
      // player side (inbound-rtp)
      framesDecoded: 0, framesReceived: 0, keyFramesDecoded: 0, packetsReceived: 0,
      bytesReceived: 0, audioPacketsReceived: 0, videoPacketsReceived: 0, packetsLost: 0,
      nackSent: 0, pliSent: 0, frameWidth: 0, frameHeight: 0,
      videoWidth: ui.remote.videoWidth, videoHeight: ui.remote.videoHeight,
    };
    for (const s of await reportsOf(sessions.publish)) {
      if (s.type !== "outbound-rtp") continue;
      out.packetsSent += s.packetsSent || 0;
      out.bytesSent += s.bytesSent || 0;
      out[s.kind + "PacketsSent"] += s.packetsSent || 0;
      if (s.kind === "video") {
        out.framesEncoded += s.framesEncoded || 0;
        out.framesSent += s.framesSent || 0;
        out.nackReceived += s.nackCount || 0;
        out.pliReceived += s.pliCount || 0;
      }
    }
    for (const s of await reportsOf(sessions.play)) {
      if (s.type !== "inbound-rtp") continue;
      out.packetsReceived += s.packetsReceived || 0;
      out.bytesReceived += s.bytesReceived || 0;
      out.packetsLost += s.packetsLost || 0;
      out[s.kind + "PacketsReceived"] += s.packetsReceived || 0;
      if (s.kind === "video") {
        out.framesDecoded += s.framesDecoded || 0;
        out.framesReceived += s.framesReceived || 0;
        out.keyFramesDecoded += s.keyFramesDecoded || 0;
        out.nackSent += s.nackCount || 0;
        out.pliSent += s.pliCount || 0;
        out.frameWidth = s.frameWidth || out.frameWidth;
        out.frameHeight = s.frameHeight || out.frameHeight;
      }
    }
    return out;
  };

  // The raw getStats() reports of both connections (what webrtc-internals shows),
  // optionally only the given types, for diagnostics.
  window.sfuRtcStats = async (types = null) => {
    const keep = (s) => !types || types.includes(s.type);
    return {
      publish: (await reportsOf(sessions.publish)).filter(keep),
      play: (await reportsOf(sessions.play)).filter(keep),
    };
  };

  function startStats() {
    if (statsTimer !== null) return;
    const tick = async () => {
      const s = await window.sfuStats();
      const lines = [];
      if (s.publishConnection !== null) {
        lines.push(`publish  ${s.publishConnection}: ${s.packetsSent} packets sent ` +
          `(audio ${s.audioPacketsSent}, video ${s.videoPacketsSent}), ` +
          `${s.framesEncoded} frames encoded, ${s.nackReceived} NACK / ${s.pliReceived} PLI received`);
      }
      if (s.playConnection !== null) {
        lines.push(`play     ${s.playConnection}: ${s.packetsReceived} packets received ` +
          `(audio ${s.audioPacketsReceived}, video ${s.videoPacketsReceived}), ${s.packetsLost} lost, ` +
          `${s.framesDecoded} frames decoded ${s.frameWidth}x${s.frameHeight}, ` +
          `${s.nackSent} NACK / ${s.pliSent} PLI sent`);
      }
      ui.stats.textContent = lines.join("\n");
    };
    statsTimer = setInterval(() => tick().catch(() => {}), 1000);
  }

  function stopStats() {
    if (statsTimer !== null) clearInterval(statsTimer);
    statsTimer = null;
  }

  ui.publish.addEventListener("click", publish);
  ui.play.addEventListener("click", play);
  ui.stop.addEventListener("click", stop);
  window.addEventListener("pagehide", () => { stop(); });

  if (params.has("room")) ui.room.value = params.get("room");
  refreshButtons();
  if (params.get("publish") === "1") publish();
  if (params.get("play") === "1") play();
})();
