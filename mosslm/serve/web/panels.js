// The settings panel and the feedback form under a reply.
import { api, ApiError } from './api.js';
import { el } from './render.js';
import { $, state, t, loggingOff } from './state.js';
import { showError } from './notice.js';
import { messageNode, rerenderMessage } from './messages.js';

// ---------------------------------------------------------------- settings panel

export function fillSettings() {
  const s = state.settings || {};
  const box = $('settings-plugins');
  box.replaceChildren();
  const names = (state.config && state.config.plugins) || [];
  if (!names.length) box.append(el('p', { class: 'muted small', text: t('no_plugins') }));
  const on = new Set(s.plugins || []);
  for (const name of names) {
    const id = `plugin-${name}`;
    const input = el('input', { type: 'checkbox', id, value: name });
    input.checked = on.has(name);
    box.append(el('label', { class: 'check', for: id }, input, el('span', { text: name })));
  }
  const temp = Number.isFinite(s.temperature) ? s.temperature : 0.7;
  $('set-temperature').value = String(temp);
  $('temperature-out').textContent = Number(temp).toFixed(2);
  $('set-max-tokens').value = Number.isFinite(s.max_tokens) ? String(s.max_tokens) : '';
  const cap = state.config && state.config.max_tokens_cap;
  if (Number.isFinite(cap)) $('set-max-tokens').max = String(cap); else $('set-max-tokens').removeAttribute('max');
  $('set-system').value = s.system_prompt || '';
}

export function openSettings() {
  fillSettings();
  $('settings-msg').textContent = '';
  $('settings-panel').hidden = false;
  $('settings-open').setAttribute('aria-expanded', 'true');
  $('settings-close').focus();
}

export function closeSettings() {
  if ($('settings-panel').hidden) return;
  $('settings-panel').hidden = true;
  $('settings-open').setAttribute('aria-expanded', 'false');
  $('settings-open').focus();
}

export async function saveSettings(e) {
  e.preventDefault();
  const plugins = [...$('settings-plugins').querySelectorAll('input[type=checkbox]')].filter((x) => x.checked).map((x) => x.value);
  const next = { plugins, temperature: parseFloat($('set-temperature').value) };
  const max = parseInt($('set-max-tokens').value, 10);
  if (Number.isFinite(max) && max > 0) next.max_tokens = max;
  const system = $('set-system').value;
  next.system_prompt = system.trim() ? system : null;
  try {
    state.settings = await api.putSettings(next);
    $('settings-msg').textContent = loggingOff() ? t('settings_not_stored') : t('saved');
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    $('settings-msg').textContent = error instanceof ApiError ? t('err_generic', { message: error.message }) : t('err_network');
  }
}

// ---------------------------------------------------------------- feedback

export function focusFeedback(id) {
  const node = messageNode(id);
  const field = node && node.querySelector('[data-testid="feedback-comment"]');
  if (field) field.focus();
}

export function feedbackForm(message) {
  const fb = message.feedback || {};
  const form = el('form', { class: 'feedback-form', testid: 'feedback-form' });
  const commentId = `fb-comment-${message.id}`;
  const betterId = `fb-better-${message.id}`;
  const comment = el('textarea', { id: commentId, rows: 2, testid: 'feedback-comment' });
  comment.value = fb.comment || '';
  const better = el('textarea', { id: betterId, rows: 4, testid: 'feedback-better' });
  better.value = fb.better_answer || '';
  const submit = el('button', { type: 'submit', class: 'primary small', testid: 'feedback-submit', text: t('feedback_submit') });
  const cancel = el('button', { type: 'button', class: 'small', text: t('cancel') });
  cancel.addEventListener('click', () => { state.feedbackOpen = null; rerenderMessage(String(message.id)); });
  const buttons = el('div', { class: 'edit-buttons' }, cancel, submit);
  if (fb.rating === 'down') {
    const remove = el('button', { type: 'button', class: 'link small', text: t('feedback_remove') });
    remove.addEventListener('click', () => { state.feedbackOpen = null; rate(message, null); });
    buttons.prepend(remove);
  }
  form.append(
    el('p', { class: 'feedback-title', text: t('feedback_title') }),
    el('label', { for: commentId, text: t('feedback_comment') }), comment,
    el('label', { for: betterId, text: t('feedback_better') }), better,
    buttons);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    state.feedbackOpen = null;
    rate(message, 'down', { better_answer: better.value.trim() ? better.value : null, comment: comment.value.trim() ? comment.value : null });
  });
  form.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.preventDefault(); cancel.click(); } });
  return form;
}

export async function rate(message, rating, extra = {}) {
  const body = { rating, ...extra };
  if (rating !== 'down') { body.better_answer = null; body.comment = null; }
  try {
    message.feedback = await api.feedback(message.id, body);
    message._thanks = rating !== null;
    setTimeout(() => { message._thanks = false; if (!state.stream) rerenderMessage(String(message.id)); }, 3000);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
  }
  rerenderMessage(String(message.id));
}
