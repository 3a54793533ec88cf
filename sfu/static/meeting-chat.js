// Chat and polls of the meeting page (docs/protocol.md 4.8-4.10), no build step.
//
// meeting.js calls window.meetingChat.start(joined, {request, people}) after its join,
// .event(message) for every server event, and .stop() when the meeting is over.
// Everything from the server is shown with textContent (never as HTML).
// For automation, window.meetingChatState reports {enabled, kept, messages: [{id, from,
// to, text, time}], errors: [text], polls: {poll_id: {poll, results, voted, choices,
// final}}}.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    chat: $("chat"), status: $("chat-status"), log: $("chat-log"), form: $("chat-form"), to: $("chat-to"),
    text: $("chat-text"), send: $("chat-send"), error: $("chat-error"), toggle: $("chat-toggle"),
    polls: $("polls"), pollForm: $("poll-form"), question: $("poll-question"), options: $("poll-options"),
    multiple: $("poll-multiple"), anonymous: $("poll-anonymous"), list: $("poll-list"), pollError: $("poll-error"),
  };
  const state = { enabled: true, kept: false, messages: [], errors: [], polls: {} };
  window.meetingChatState = state;
  let api = null; // {request, people, participantId, host}

  function showError(where, err) {
    const text = err && err.message ? err.message : String(err);
    state.errors.push(text);
    where.textContent = text;
  }

  // ---- chat ------------------------------------------------------------------------------
  function showChatState() {
    const canSend = state.enabled || (api && api.host);
    const off = "A host turned chat off" + (api && api.host ? " (hosts can still write)." : ".");
    ui.status.textContent = (state.enabled ? "" : off) + (state.kept ? " Chat is kept with the meeting's history." : "");
    ui.chat.dataset.enabled = String(state.enabled);
    ui.text.disabled = ui.send.disabled = !canSend;
    ui.toggle.textContent = state.enabled ? "Turn chat off" : "Turn chat on";
  }

  function refreshRecipients() {
    if (!api) return;
    const chosen = ui.to.value;
    const options = [new Option("Everyone", "")];
    for (const person of api.people.values()) {
      if (!person.via) options.push(new Option(person.name, person.id));
    }
    ui.to.replaceChildren(...options);
    ui.to.value = [...ui.to.options].some((o) => o.value === chosen) ? chosen : "";
  }

  function addMessage(message, mine) {
    state.messages.push({ id: message.message_id, from: message.from, to: message.to, text: message.text,
      time: message.time });
    const item = document.createElement("li");
    item.dataset.messageId = message.message_id;
    if (message.to) item.classList.add("private");
    const head = document.createElement("span");
    head.className = "who";
    const when = new Date(message.time * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const whom = message.to ? (mine ? ` to ${message.to.name}` : " to you") : "";
    head.textContent = `${mine ? "You" : message.from.name}${whom} · ${when}`;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = message.text;
    item.append(head, body);
    ui.log.append(item);
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  async function send() {
    ui.error.textContent = "";
    const text = ui.text.value;
    if (!text.trim()) return;
    const fields = { text };
    if (ui.to.value) fields.to = ui.to.value;
    try {
      const answer = await api.request("chat", fields);
      addMessage(answer.message, true);
      ui.text.value = "";
    } catch (err) {
      showError(ui.error, err);
    }
  }

  // ---- polls -----------------------------------------------------------------------------
  function pollEntry(poll) {
    const entry = state.polls[poll.poll_id]
      || (state.polls[poll.poll_id] = { voted: false, choices: [], results: null });
    entry.poll = poll;
    return entry;
  }

  function renderPoll(pollId) {
    const entry = state.polls[pollId];
    const poll = entry.poll;
    let box = ui.list.querySelector(`fieldset[data-poll-id="${CSS.escape(pollId)}"]`);
    if (!box) {
      box = document.createElement("fieldset");
      box.className = "poll";
      box.dataset.pollId = pollId;
      ui.list.prepend(box);
    }
    box.dataset.open = String(poll.open);
    const legend = document.createElement("legend");
    legend.textContent = poll.question;
    const kind = document.createElement("p");
    kind.className = "kind";
    kind.textContent = [poll.anonymous
      ? "Anonymous: nobody, not even the server, knows what you chose; your vote is final"
      : "Named: hosts see who chose what; you may change your vote until it closes",
    poll.multiple ? "choose one or more" : "choose one", poll.open ? "open" : "closed"].join(" · ");
    const parts = [legend, kind];
    const locked = !poll.open || (poll.anonymous && entry.voted);
    const choices = document.createElement("div");
    choices.className = "choices";
    poll.options.forEach((text, i) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = poll.multiple ? "checkbox" : "radio";
      input.name = `poll-${pollId}`;
      input.value = String(i);
      input.checked = entry.choices.includes(i);
      input.disabled = locked;
      label.append(input, " ", text);
      choices.append(label);
    });
    parts.push(choices);
    if (poll.open) {
      const vote = document.createElement("button");
      vote.type = "button";
      vote.className = "vote";
      vote.textContent = entry.voted ? (poll.anonymous ? "Voted" : "Change vote") : "Vote";
      vote.disabled = locked;
      vote.addEventListener("click", () => castVote(pollId, box));
      parts.push(vote);
    }
    if (api.host && poll.open) {
      const close = document.createElement("button");
      close.type = "button";
      close.className = "close";
      close.textContent = "Close poll";
      close.addEventListener("click", () => api.request("poll_close", { poll_id: pollId })
        .then((answer) => { poll.open = false; entry.results = answer.results; renderPoll(pollId); })
        .catch((err) => showError(ui.pollError, err)));
      parts.push(close);
    }
    if (entry.results) {
      const list = document.createElement("ul");
      list.className = "results";
      for (const option of entry.results.options) {
        const li = document.createElement("li");
        const names = option.voters ? (option.voters.length ? ` (${option.voters.join(", ")})` : "") : "";
        li.textContent = `${option.option}: ${option.votes}${names}`;
        list.append(li);
      }
      const total = document.createElement("p");
      total.className = "total";
      const hostsOnly = poll.open ? " · only hosts see this while the poll is open" : "";
      total.textContent = `${entry.results.voters} voted${hostsOnly}`;
      parts.push(list, total);
    }
    box.replaceChildren(...parts);
  }

  async function castVote(pollId, box) {
    ui.pollError.textContent = "";
    const chosen = [...box.querySelectorAll("input:checked")].map((input) => Number(input.value));
    if (!chosen.length) return showError(ui.pollError, new Error("choose an option first"));
    try {
      const answer = await api.request("poll_vote", { poll_id: pollId, choices: chosen });
      const entry = state.polls[pollId];
      entry.voted = true;
      entry.choices = answer.choices;
      entry.final = answer.final;
      renderPoll(pollId);
    } catch (err) {
      showError(ui.pollError, err);
    }
  }

  async function createPoll() {
    ui.pollError.textContent = "";
    const options = ui.options.value.split("\n").map((line) => line.trim()).filter(Boolean);
    try {
      const answer = await api.request("poll_create", { question: ui.question.value.trim(), options,
        multiple: ui.multiple.checked, anonymous: ui.anonymous.checked });
      const entry = pollEntry(answer.poll);
      entry.results = answer.results;
      renderPoll(answer.poll.poll_id);
      ui.question.value = "";
      ui.options.value = "";
    } catch (err) {
      showError(ui.pollError, err);
    }
  }

  // ---- events and life cycle -------------------------------------------------------------
  const EVENTS = {
    chat(ev) { addMessage(ev, false); },
    chat_state(ev) { state.enabled = Boolean(ev.enabled); showChatState(); },
    poll_opened(ev) { pollEntry(ev.poll); renderPoll(ev.poll.poll_id); },
    poll_results(ev) {
      const entry = state.polls[ev.results.poll_id];
      if (entry) { entry.results = ev.results; renderPoll(ev.results.poll_id); }
    },
    poll_closed(ev) {
      const entry = state.polls[ev.poll_id];
      if (entry) { entry.poll.open = false; entry.results = ev.results; renderPoll(ev.poll_id); }
    },
    participant_joined: refreshRecipients,
    participant_left: refreshRecipients,
  };

  window.meetingChat = {
    start(joined, hooks) {
      api = { request: hooks.request, people: hooks.people, host: Boolean(joined.permissions.polls) };
      const chat = joined.chat || { enabled: true, kept: false, max_chars: 2000 };
      state.enabled = Boolean(chat.enabled);
      state.kept = Boolean(chat.kept);
      ui.text.maxLength = chat.max_chars;
      ui.toggle.hidden = !joined.permissions.chat_enable;
      ui.pollForm.hidden = !api.host;
      ui.chat.hidden = ui.polls.hidden = false;
      for (const info of joined.polls || []) {
        const entry = pollEntry(info);
        entry.voted = Boolean(info.voted);
        entry.choices = info.choices || [];
        entry.results = info.results || null;
        renderPoll(info.poll_id);
      }
      refreshRecipients();
      showChatState();
    },
    event(message) {
      const handler = api && EVENTS[message.event];
      if (handler) handler(message);
    },
    stop() {
      api = null;
      ui.chat.hidden = ui.polls.hidden = true;
      ui.log.replaceChildren();
      ui.list.replaceChildren();
      ui.error.textContent = ui.pollError.textContent = "";
      state.messages = [];
      state.polls = {};
    },
  };

  ui.form.addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
  ui.toggle.addEventListener("click", () => api && api.request("chat_enable", { enabled: !state.enabled })
    .then((answer) => { state.enabled = answer.enabled; showChatState(); })
    .catch((err) => showError(ui.error, err)));
  ui.pollForm.addEventListener("submit", (ev) => { ev.preventDefault(); createPoll(); });
})();
