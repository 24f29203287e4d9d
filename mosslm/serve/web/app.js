// The web chat's entry point: wires the page's controls to the modules and starts. See docs/web-api.md.
// state.js: state, language table, message tree; messages.js: the conversation; sidebar.js: the list;
// composer.js: sending and streaming; panels.js: settings and feedback; notice.js: notices; screens.js: login, language.
import { api } from './api.js';
import { $, state, t } from './state.js';
import { hideNotice } from './notice.js';
import { newChat, openSidebar, closeSidebar } from './sidebar.js';
import { autogrow, sendFromComposer, requestStop } from './composer.js';
import { openSettings, closeSettings, saveSettings } from './panels.js';
import { initialLang, applyLang, toggleLang, showLogin, enterApp, sessionExpired, login, logout } from './screens.js';

// ---------------------------------------------------------------- wiring and start

function wire() {
  $('login-form').addEventListener('submit', login);
  for (const button of document.querySelectorAll('[data-lang-toggle]')) button.addEventListener('click', toggleLang);
  $('composer-form').addEventListener('submit', (e) => { e.preventDefault(); sendFromComposer(); });
  $('composer').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); sendFromComposer(); }
  });
  $('composer').addEventListener('input', autogrow);
  window.addEventListener('resize', autogrow);
  $('stop').addEventListener('click', requestStop);
  $('new-chat').addEventListener('click', newChat);
  $('logout').addEventListener('click', logout);
  $('settings-open').addEventListener('click', () => ($('settings-panel').hidden ? openSettings() : closeSettings()));
  $('settings-close').addEventListener('click', closeSettings);
  $('settings-form').addEventListener('submit', saveSettings);
  $('set-temperature').addEventListener('input', () => { $('temperature-out').textContent = Number($('set-temperature').value).toFixed(2); });
  $('menu-open').addEventListener('click', openSidebar);
  $('close-menu').addEventListener('click', closeSidebar);
  $('backdrop').addEventListener('click', closeSidebar);
  $('retry').addEventListener('click', () => { const retry = state.retry; hideNotice(); if (retry) retry(); });
  $('notice-close').addEventListener('click', hideNotice);
  for (const button of document.querySelectorAll('[data-example]')) {
    button.addEventListener('click', () => {
      if (state.stream) return;
      $('composer').value = t(button.dataset.example);
      sendFromComposer();
    });
  }
  $('scroller').addEventListener('scroll', () => {
    const s = $('scroller');
    state.stick = s.scrollTop + s.clientHeight >= s.scrollHeight - 48;
  }, { passive: true });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (!$('settings-panel').hidden) closeSettings();
    else closeSidebar();
  });
  api.onUnauthorized = sessionExpired;
}

async function main() {
  state.lang = initialLang();
  try {
    const response = await fetch('/static/i18n.json', { credentials: 'same-origin' });
    state.strings = await response.json();
  } catch (_) { /* the keys show; the page still works */ }
  wire();
  applyLang();
  try {
    state.config = await api.config();
  } catch (error) {
    showLogin(null);
    $('login-error').textContent = t('err_network');
    $('login-error').hidden = false;
    return;
  }
  try {
    const me = await api.me();
    await enterApp(me);
  } catch (error) {
    showLogin(null);
  }
}

main();
