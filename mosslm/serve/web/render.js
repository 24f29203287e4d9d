// Building the message DOM. Only an assistant message's `html` (rendered and sanitised by the
// server) goes into innerHTML; every other text from the model, a tool or a person is textContent.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'testid') node.dataset.testid = value;
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function safeUrl(url) {
  return typeof url === 'string' && /^https?:\/\//i.test(url.trim()) ? url.trim() : null;
}

function oneLine(text, max = 80) {
  const flat = String(text ?? '').replace(/\s+/g, ' ').trim();
  return flat.length > max ? flat.slice(0, max - 1) + '…' : flat;
}

// `Calculate("37*91") → 3367` for each call; while it runs, "Calculating…".
export function stepSummary(plugin, t, running) {
  const calls = (plugin && Array.isArray(plugin.calls)) ? plugin.calls : [];
  const parts = [];
  for (const call of calls) {
    const name = call.name || '';
    let command = String(call.command ?? '').trim();
    if (name && !command.startsWith(name + '(')) command = `${name}(${JSON.stringify(command)})`;
    const result = call.result === null || call.result === undefined || call.result === '' ? null : oneLine(resultValue(call.result), 60);
    parts.push(result === null ? oneLine(command, 80) : `${oneLine(command, 80)} → ${result}`);
  }
  if (!parts.length && plugin && plugin.commands && String(plugin.commands).trim() && String(plugin.commands).trim() !== 'None') {
    const command = oneLine(plugin.commands, 80);
    const result = plugin.results && String(plugin.results).trim() ? oneLine(resultValue(plugin.results), 60) : null;
    parts.push(result ? `${command} → ${result}` : command);
  }
  const finished = calls.some((c) => c.result !== null && c.result !== undefined && c.result !== '') ||
    (plugin && plugin.results && String(plugin.results).trim());
  if (running && !finished) {
    const name = (calls[0] && calls[0].name) || commandName(plugin && plugin.commands);
    const key = name ? `step_${name}` : null;
    const label = key && t.has(key) ? t(key) : name ? t('step_running', { name }) : t('thinking');
    return { text: parts.length ? `${label} ${parts.join('; ')}` : label, running: true };
  }
  return { text: parts.join('; ') || t('step_done'), running: false };
}

// A Results block reads `Calculate("37*91") => '3367'`: the summary shows just 3367.
function resultValue(result) {
  let text = String(result).trim();
  const arrow = text.indexOf('=>');
  if (arrow >= 0) text = text.slice(arrow + 2).trim();
  const m = /^'([\s\S]*)'$/.exec(text) || /^"([\s\S]*)"$/.exec(text);
  return m ? m[1] : text;
}

function commandName(commands) {
  const m = /^\s*([A-Za-z][A-Za-z0-9_]*)\s*\(/.exec(String(commands || ''));
  return m ? m[1] : null;
}

function section(label, testid, text) {
  if (text === null || text === undefined || String(text).trim() === '' || String(text).trim() === 'None') return null;
  return el('div', { class: 'step-section' },
    el('div', { class: 'step-label', text: label }),
    el('pre', { class: 'step-text', testid, text: String(text) }));
}

// The collapsible plugin step. `open` keeps the person's choice across re-renders.
export function pluginStep(plugin, t, running, open) {
  const summary = stepSummary(plugin, t, running);
  const details = el('details', { class: 'plugin-step' + (summary.running ? ' running' : ''), testid: 'plugin-step' });
  if (open) details.open = true;
  details.append(el('summary', {},
    el('span', { class: 'step-icon', 'aria-hidden': 'true', text: summary.running ? '' : '⚙' }),
    el('span', { class: 'step-summary', text: summary.text })));
  const body = el('div', { class: 'step-body' });
  const calls = Array.isArray(plugin.calls) ? plugin.calls : [];
  const timing = calls.filter((c) => Number.isFinite(c.duration_ms)).map((c) => `${c.name}: ${t('duration', { ms: Math.round(c.duration_ms) })}`);
  body.append(
    section(t('thoughts'), 'plugin-thoughts', plugin.thoughts) || el('span', { hidden: true }),
    section(t('commands'), 'plugin-commands', plugin.commands) || el('span', { hidden: true }),
    section(t('results'), 'plugin-results', plugin.results) || el('span', { hidden: true }),
  );
  if (timing.length) body.append(el('p', { class: 'muted small', text: timing.join(' · ') }));
  const sources = Array.isArray(plugin.sources) ? plugin.sources : [];
  if (sources.length) {
    const list = el('ol', { class: 'sources' });
    for (const s of sources) {
      const href = safeUrl(s.url);
      const title = String(s.title || s.url || '');
      const item = el('li', { value: Number.isFinite(s.n) ? s.n : null });
      item.append(href ? el('a', { href, target: '_blank', rel: 'noopener noreferrer', text: title }) : el('span', { text: title }));
      list.append(item);
    }
    body.append(el('div', { class: 'step-section' }, el('div', { class: 'step-label', text: t('sources') }), list));
  }
  details.append(body);
  return details;
}

// Put the server's sanitised html into the body, then dress it: links open in a new tab, the
// citation links get their test id, code blocks a copy button (no text nodes added to the body).
export function setReplyHtml(body, html, t, onCopy) {
  body.innerHTML = html || '';
  for (const a of body.querySelectorAll('a')) {
    const href = safeUrl(a.getAttribute('href'));
    if (!href) { a.removeAttribute('href'); continue; }
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
  }
  for (const a of body.querySelectorAll('sup.cite a')) a.dataset.testid = 'citation';
  for (const pre of body.querySelectorAll('pre')) {
    pre.classList.add('has-copy');
    const button = el('button', { type: 'button', class: 'code-copy', 'data-svg': 'copy', 'aria-label': t('copy_code'), title: t('copy_code') });
    button.addEventListener('click', () => onCopy((pre.querySelector('code') || pre).textContent, button));
    pre.append(button);
  }
}
