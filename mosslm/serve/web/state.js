// The app state, the language table and the message tree (which branch shows). See docs/web-api.md.

export const $ = (id) => document.getElementById(id);

const ROOT = '\u0000root';

export const state = {
  lang: 'en',
  strings: { zh: {}, en: {} },
  config: null,
  me: null,
  settings: null,
  conversations: [],
  conv: null,            // {id, title, ...} or null for a new chat
  messages: new Map(),   // id -> Message (plus local fields _blocked, _local)
  order: [],             // ids in creation order
  chosen: new Map(),     // parent key -> the child shown
  stream: null,          // the reply being streamed
  openSteps: new Set(),  // message ids whose plugin step is open
  feedbackOpen: null,    // message id whose feedback form is open
  editing: null,         // user message id being edited
  stick: true,           // follow the stream unless the person scrolled up
  retry: null,           // what the notice's retry button does
  noticeTimer: null,
  localSeq: 0,
};

// ---------------------------------------------------------------- language

export function t(key, vars) {
  const table = state.strings[state.lang] || {};
  let text = table[key] ?? state.strings.en[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) text = text.split(`{${k}}`).join(String(v));
  return text;
}
t.has = (key) => key in (state.strings[state.lang] || {}) || key in state.strings.en;

// ---------------------------------------------------------------- the message tree

export const keyOf = (parentId) => (parentId === null || parentId === undefined ? ROOT : String(parentId));

export function addMessage(message, choose = true) {
  const id = String(message.id);
  if (!state.messages.has(id)) state.order.push(id);
  state.messages.set(id, message);
  if (choose) state.chosen.set(keyOf(message.parent_id), id);
}

export function removeMessage(id) {
  id = String(id);
  const message = state.messages.get(id);
  state.messages.delete(id);
  state.order = state.order.filter((x) => x !== id);
  if (message && state.chosen.get(keyOf(message.parent_id)) === id) state.chosen.delete(keyOf(message.parent_id));
}

export function childrenOf(key) {
  return state.order.filter((id) => keyOf(state.messages.get(id).parent_id) === key);
}

export function currentPath() {
  const path = [];
  let key = ROOT;
  for (let guard = 0; guard < 10000; guard++) {
    const children = childrenOf(key);
    if (!children.length) break;
    let pick = state.chosen.get(key);
    if (!children.includes(pick)) pick = children[children.length - 1];
    const message = state.messages.get(pick);
    path.push(message);
    key = String(message.id);
  }
  return path;
}

// The messages from the first down to `id` (the history a reply to `id`'s child follows).
export function pathTo(id) {
  const path = [];
  let message = id === null || id === undefined ? null : state.messages.get(String(id));
  for (let guard = 0; message && guard < 10000; guard++) {
    path.unshift(message);
    message = message.parent_id === null || message.parent_id === undefined ? null : state.messages.get(String(message.parent_id));
  }
  return path;
}

export function localId(prefix) {
  state.localSeq += 1;
  return `${prefix}-${state.localSeq}`;
}

export function resetConversation() {
  state.conv = null;
  state.messages = new Map();
  state.order = [];
  state.chosen = new Map();
  state.openSteps = new Set();
  state.feedbackOpen = null;
  state.editing = null;
}

export function loggingOff() {
  return !!(state.me && state.me.user && state.me.user.logging === false);
}
