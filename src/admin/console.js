'use strict';
// The console reads GET /admin/overview every 2 s with the admin token,
// which it keeps in this tab's sessionStorage. Everything it shows is put
// in with textContent: names and targets are never read as markup.
(function () {
  const TOKEN_KEY = 'fngate-admin-token';
  const REFRESH_MS = 2000;
  const STATES = ['pending', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled'];
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0;

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function showSignIn(message) {
    clearTimeout(timer);
    generation += 1;
    $('data').hidden = true;
    $('sign-out').hidden = true;
    $('sign-in').hidden = false;
    $('sign-in-error').hidden = !message;
    $('sign-in-error').textContent = message || '';
    $('status').textContent = 'Not signed in';
    $('token').focus();
  }

  function cell(text, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    if (text === null || text === undefined) {
      td.textContent = '-';
      td.classList.add('none');
    } else {
      td.textContent = String(text);
    }
    return td;
  }

  function instanceCells(row, instances) {
    for (const state of ['starting', 'idle', 'busy']) {
      row.append(cell(instances ? instances[state] : null, 'n ' + state));
    }
  }

  function functionRow(f) {
    const row = document.createElement('tr');
    row.dataset.app = f.app;
    row.dataset.name = f.name;
    row.dataset.route = f.route;
    row.append(cell(f.route, 'route'), cell(f.backend, 'backend'), cell(f.target, 'target'));
    row.append(cell(f.running + ' / ' + f.concurrency, 'n running'), cell(f.waiting, 'n waiting'));
    instanceCells(row, f.instances);
    row.append(cell(f.latency.p50_ms, 'n p50'), cell(f.latency.p99_ms, 'n p99'));
    row.append(cell(f.latency.requests, 'n requests'));
    return row;
  }

  function classRow(c) {
    const row = document.createElement('tr');
    row.dataset.app = c.app;
    row.dataset.name = c.name;
    row.append(cell(c.app + '/' + c.name, 'class'), cell(c.backend, 'backend'));
    row.append(cell(c.target, 'target'));
    row.append(cell(c.parameters.length ? c.parameters.join(', ') : null, 'parameters'));
    row.append(cell(c.methods.join(', '), 'methods'));
    instanceCells(row, c.instances);
    return row;
  }

  function rows(tableId, items, make, empty) {
    const body = $(tableId).tBodies[0];
    const fresh = items.map(make);
    if (!fresh.length) {
      const row = document.createElement('tr');
      const td = cell(empty, 'none');
      td.colSpan = $(tableId).tHead.rows[0].cells.length;
      row.append(td);
      fresh.push(row);
    }
    body.replaceChildren(...fresh);
  }

  function seconds(n) {
    if (n < 120) return n + ' s';
    return Math.round(n / 60) + ' min';
  }

  function render(overview) {
    const calls = $('calls');
    calls.replaceChildren(...STATES.map((state) => {
      const box = document.createElement('div');
      box.dataset.state = state;
      const dt = document.createElement('dt');
      dt.textContent = state.replace('_', ' ');
      const dd = document.createElement('dd');
      dd.textContent = overview.calls ? String(overview.calls[state] ?? 0) : '?';
      box.append(dt, dd);
      return box;
    }));
    $('window').textContent = seconds(overview.window_seconds);
    rows('functions', overview.functions, functionRow, 'No function is deployed.');
    rows('classes', overview.classes, classRow, 'No class is deployed.');
  }

  async function refresh(mine) {
    const current = token();
    if (!current || mine !== generation) return;
    try {
      const response = await fetch('/admin/overview', {
        headers: { Authorization: 'Bearer ' + current, Accept: 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
      });
      if (mine !== generation) return;
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        showSignIn('The gateway refused this token.');
        return;
      }
      if (!response.ok) {
        $('status').textContent = 'The gateway answered ' + response.status + '; retrying';
      } else {
        render(await response.json());
        $('data').hidden = false;
        $('status').textContent = 'Updated ' + new Date().toLocaleTimeString();
      }
    } catch (e) {
      if (mine !== generation) return;
      $('status').textContent = 'The gateway cannot be reached; retrying';
    }
    timer = setTimeout(() => refresh(mine), REFRESH_MS);
  }

  function start() {
    clearTimeout(timer);
    generation += 1;
    $('sign-in').hidden = true;
    $('sign-out').hidden = false;
    $('status').textContent = 'Loading';
    refresh(generation);
  }

  $('sign-in').addEventListener('submit', (event) => {
    event.preventDefault();
    const typed = $('token').value.trim();
    if (!typed) return;
    sessionStorage.setItem(TOKEN_KEY, typed);
    $('token').value = '';
    start();
  });

  $('sign-out').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn('');
  });

  if (token()) start();
  else showSignIn('');
})();
