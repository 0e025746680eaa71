/*
 * The listening page: one <audio> element, the page's own controls, the
 * waveform drawn by wavesurfer.js from the gateway's peaks, and for a stereo
 * recording mute/solo per channel through Web Audio.
 *
 * Everything comes from data-* attributes on <main id="player"> (no inline
 * script: the page's CSP allows only the gateway's own files). The controls
 * work on the <audio> element directly, so the page plays whether or not the
 * waveform could be drawn.
 *
 * State the tests read: main[data-playing], section.wave[data-state]
 * (loading | drawn | failed | none), .channel[data-muted|data-soloed|
 * data-audible|data-gain] (data-gain is read back from the GainNode), and the
 * performance marks "player:start", "player:peaks" and "player:waveform-drawn".
 */
(function () {
  'use strict';

  var root = document.getElementById('player');
  if (!root) return;
  performance.mark('player:start');

  var RATES = [0.75, 1, 1.25, 1.5, 1.75, 2];
  var RATE_KEY = 'storage-gateway.player.rate';
  var PEAKS_TIMEOUT_MS = 30000;
  var SKIP = Number(root.dataset.skip) || 10;
  var STEP = Number(root.dataset.step) || 5;

  var audio = root.querySelector('audio');
  var wave = root.querySelector('.wave');
  var waveCanvas = root.querySelector('.wave-canvas');
  var waveStatus = root.querySelector('.wave-status');
  var seek = root.querySelector('.seek');
  var playButton = root.querySelector('[data-action="play"]');
  var currentText = root.querySelector('[data-role="current"]');
  var durationTexts = root.querySelectorAll('[data-role="duration"], [data-role="total"]');
  var speed = root.querySelector('[data-role="speed"]');
  var errorBox = root.querySelector('.error');
  var channelRows = Array.prototype.slice.call(root.querySelectorAll('.channel'));
  var lanes = Array.prototype.slice.call(root.querySelectorAll('.lane'));
  var serverDuration = parseFloat(root.dataset.duration);
  var peaksDuration = NaN;

  // The page's controls replace the native ones (kept in the markup for a page without script).
  audio.controls = false;
  root.classList.remove('no-js');

  // ---- time -------------------------------------------------------------

  function clock(seconds) {
    if (!isFinite(seconds) || seconds < 0) return '–:––';
    var whole = Math.floor(seconds);
    var h = Math.floor(whole / 3600);
    var m = Math.floor((whole % 3600) / 60);
    var s = whole % 60;
    var ss = (s < 10 ? '0' : '') + s;
    if (h) return h + ':' + (m < 10 ? '0' : '') + m + ':' + ss;
    return m + ':' + ss;
  }

  /** The audio element's duration once known, else the server's, else the peaks' upper bound. */
  function duration() {
    var d = audio.duration;
    if (isFinite(d) && d > 0) return d;
    if (serverDuration > 0) return serverDuration;
    return peaksDuration;
  }

  function seekTo(seconds) {
    var d = duration();
    var t = Math.max(0, seconds);
    if (isFinite(d)) t = Math.min(t, d);
    audio.currentTime = t;
    showTime();
  }

  var seekDragging = false;

  function showTime() {
    var d = duration();
    var t = audio.currentTime;
    currentText.textContent = clock(t);
    durationTexts.forEach(function (node) { node.textContent = clock(d); });
    if (isFinite(d)) seek.max = String(d);
    if (!seekDragging) seek.value = String(t);
    seek.setAttribute('aria-valuetext', clock(t) + ' of ' + clock(d));
  }

  ['timeupdate', 'durationchange', 'loadedmetadata', 'seeked', 'emptied'].forEach(function (name) {
    audio.addEventListener(name, showTime);
  });

  seek.addEventListener('input', function () {
    seekDragging = true;
    seekTo(Number(seek.value));
  });
  seek.addEventListener('change', function () {
    seekDragging = false;
    seekTo(Number(seek.value));
  });

  // ---- play / pause ---------------------------------------------------------

  function showPlaying() {
    var playing = !audio.paused && !audio.ended;
    root.dataset.playing = String(playing);
    playButton.setAttribute('aria-label', playing ? 'Pause' : 'Play');
  }

  ['play', 'playing', 'pause', 'ended'].forEach(function (name) {
    audio.addEventListener(name, showPlaying);
  });

  function togglePlay() {
    if (audio.paused || audio.ended) {
      ensureGraph();
      var started = audio.play();
      if (started && started.catch) {
        started.catch(function (error) {
          if (error && error.name !== 'AbortError') showError('Playback could not start: ' + error.message);
        });
      }
    } else {
      audio.pause();
    }
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  audio.addEventListener('error', function () {
    var error = audio.error;
    var why = {
      1: 'loading was aborted',
      2: 'a network error',
      3: 'the recording could not be decoded',
      4: 'this browser cannot play this recording',
    }[error ? error.code : 0];
    showError('The recording cannot be played' + (why ? ': ' + why + '.' : '.'));
  });

  playButton.addEventListener('click', togglePlay);
  root.querySelector('[data-action="back"]').addEventListener('click', function () {
    seekTo(audio.currentTime - SKIP);
  });
  root.querySelector('[data-action="forward"]').addEventListener('click', function () {
    seekTo(audio.currentTime + SKIP);
  });

  // ---- speed ----------------------------------------------------------------

  function setRate(rate) {
    audio.preservesPitch = true; // the default, said explicitly: voices keep their pitch at 2x
    audio.defaultPlaybackRate = rate; // survives a reload of the element
    audio.playbackRate = rate;
    speed.value = String(rate);
    try {
      localStorage.setItem(RATE_KEY, String(rate));
    } catch (ignored) {
      // storage refused (a sandboxed frame): the speed is simply not remembered
    }
  }

  function stepRate(direction) {
    var current = audio.playbackRate;
    var index = 0;
    RATES.forEach(function (rate, i) {
      if (Math.abs(rate - current) < Math.abs(RATES[index] - current)) index = i;
    });
    setRate(RATES[Math.max(0, Math.min(RATES.length - 1, index + direction))]);
  }

  speed.addEventListener('change', function () {
    setRate(Number(speed.value));
  });

  (function restoreRate() {
    var saved = NaN;
    try {
      saved = Number(localStorage.getItem(RATE_KEY));
    } catch (ignored) {
      // no storage: start at 1x
    }
    setRate(RATES.indexOf(saved) >= 0 ? saved : 1);
  })();

  // ---- keyboard -------------------------------------------------------------

  document.addEventListener('keydown', function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    var tag = target && target.tagName;
    var typing = tag === 'SELECT' || tag === 'TEXTAREA' || (tag === 'INPUT' && target.type !== 'range');
    if (typing) return;
    var key = event.key;
    if (key === ' ' || key === 'Spacebar') {
      // A focused button or link is activated by space as usual.
      if (tag === 'BUTTON' || tag === 'A') return;
      togglePlay();
    } else if (key === 'ArrowLeft') {
      seekTo(audio.currentTime - STEP);
    } else if (key === 'ArrowRight') {
      seekTo(audio.currentTime + STEP);
    } else if (key === 'ArrowUp' || key === '+' || key === '=') {
      stepRate(1);
    } else if (key === 'ArrowDown' || key === '-') {
      stepRate(-1);
    } else {
      return;
    }
    event.preventDefault();
  });

  // ---- channels: mute / solo through Web Audio --------------------------------
  // <audio> -> MediaElementSource -> ChannelSplitter -> a GainNode per channel
  // -> one mono mix (so both parties are heard in both ears) -> destination.

  var channelState = channelRows.map(function () { return { muted: false, soloed: false }; });
  var graph = null;
  var graphFailed = false;

  /** Build the graph once, from a user gesture (an AudioContext made earlier would stay suspended). */
  function ensureGraph() {
    if (graph || graphFailed || !channelRows.length) return graph;
    var Context = window.AudioContext || window.webkitAudioContext;
    try {
      if (!Context) throw new Error('no Web Audio');
      var context = new Context();
      var source = context.createMediaElementSource(audio);
      var splitter = context.createChannelSplitter(2);
      var mix = context.createGain();
      mix.channelCount = 1;
      mix.channelCountMode = 'explicit';
      mix.channelInterpretation = 'speakers';
      source.connect(splitter);
      var gains = channelRows.map(function (row, index) {
        var gain = context.createGain();
        splitter.connect(gain, index);
        gain.connect(mix);
        return gain;
      });
      mix.connect(context.destination);
      graph = { context: context, gains: gains };
    } catch (error) {
      graphFailed = true;
      console.warn('player: mute and solo are unavailable:', error && error.message);
      channelRows.forEach(function (row) {
        row.querySelectorAll('button').forEach(function (button) { button.disabled = true; });
      });
      return null;
    }
    if (graph.context.state === 'suspended') graph.context.resume().catch(function () {});
    applyGains();
    return graph;
  }

  function applyGains() {
    var anySolo = channelState.some(function (state) { return state.soloed; });
    channelState.forEach(function (state, index) {
      var audible = !state.muted && (!anySolo || state.soloed);
      var row = channelRows[index];
      row.dataset.muted = String(state.muted);
      row.dataset.soloed = String(state.soloed);
      row.dataset.audible = String(audible);
      row.querySelector('[data-action="mute"]').setAttribute('aria-pressed', String(state.muted));
      row.querySelector('[data-action="solo"]').setAttribute('aria-pressed', String(state.soloed));
      if (lanes[index]) lanes[index].dataset.audible = String(audible);
      if (graph) {
        var gain = graph.gains[index].gain;
        gain.value = audible ? 1 : 0;
        row.dataset.gain = String(gain.value);
      }
    });
  }

  channelRows.forEach(function (row, index) {
    row.querySelector('[data-action="mute"]').addEventListener('click', function () {
      ensureGraph();
      channelState[index].muted = !channelState[index].muted;
      applyGains();
    });
    row.querySelector('[data-action="solo"]').addEventListener('click', function () {
      ensureGraph();
      channelState[index].soloed = !channelState[index].soloed;
      applyGains();
    });
  });

  // Playback started some other way (a media key, say) after the user interacted with the page.
  audio.addEventListener('play', function () {
    var activation = navigator.userActivation;
    if (!activation || activation.hasBeenActive) ensureGraph();
  });

  // ---- waveform ---------------------------------------------------------------

  function setWave(state, message) {
    wave.dataset.state = state;
    waveStatus.textContent = message;
  }

  function fetchJson(url) {
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, PEAKS_TIMEOUT_MS);
    return fetch(url, { credentials: 'same-origin', signal: controller.signal })
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json();
      })
      .finally(function () { clearTimeout(timer); });
  }

  /**
   * audiowaveform JSON (version 1 or 2, 8 or 16 bits) -> one Float32Array per channel in -1..1,
   * as [min0, max0, min1, max1, ...]: wavesurfer draws each pixel from the largest magnitude.
   */
  function parsePeaks(doc) {
    if (!doc || typeof doc !== 'object') throw new Error('not a JSON object');
    var channels = doc.channels === undefined ? 1 : doc.channels;
    var length = doc.length;
    var data = doc.data;
    var scale = doc.bits === 8 ? 128 : doc.bits === 16 ? 32768 : 0;
    if (doc.version !== 1 && doc.version !== 2) throw new Error('unknown version');
    if (!scale) throw new Error('bits must be 8 or 16');
    if (channels !== 1 && channels !== 2) throw new Error('channels must be 1 or 2');
    if (!Number.isInteger(length) || length < 1) throw new Error('bad length');
    if (!Array.isArray(data) || data.length !== length * 2 * channels) throw new Error('data does not match length');
    if (!(doc.sample_rate > 0) || !(doc.samples_per_pixel > 0)) throw new Error('bad sample_rate or samples_per_pixel');
    var out = [];
    for (var c = 0; c < channels; c++) out.push(new Float32Array(length * 2));
    for (var p = 0; p < length; p++) {
      for (c = 0; c < channels; c++) {
        var i = (p * channels + c) * 2;
        var low = data[i];
        var high = data[i + 1];
        if (typeof low !== 'number' || typeof high !== 'number' || !isFinite(low) || !isFinite(high)) {
          throw new Error('data holds a value that is not a number');
        }
        out[c][2 * p] = low / scale;
        out[c][2 * p + 1] = high / scale;
      }
    }
    return { channels: out, duration: (doc.samples_per_pixel * length) / doc.sample_rate };
  }

  function cssColor(style, name, fallback) {
    return style.getPropertyValue(name).trim() || fallback;
  }

  function draw(peaks) {
    if (typeof window.WaveSurfer !== 'function') throw new Error('wavesurfer.js did not load');
    peaksDuration = peaks.duration;
    showTime();
    var split = peaks.channels.length > 1;
    var style = getComputedStyle(root);
    // One scale for both channels, so the louder party still looks louder.
    var maxPeak = 0;
    peaks.channels.forEach(function (channel) {
      for (var i = 0; i < channel.length; i++) maxPeak = Math.max(maxPeak, Math.abs(channel[i]));
    });
    var options = {
      container: waveCanvas,
      media: audio,
      peaks: peaks.channels,
      duration: duration() || peaks.duration,
      height: Number(root.dataset.waveHeight) || 80, // the CSP's style hash is for this height
      waveColor: cssColor(style, '--wave-color', '#9aa6b6'),
      progressColor: cssColor(style, '--wave-progress', '#0a5bc4'),
      cursorColor: cssColor(style, '--wave-cursor', '#1b1f24'),
      cursorWidth: 2,
      barWidth: 2,
      barGap: 1,
      barRadius: 1,
      normalize: true,
      maxPeak: maxPeak || 1,
      dragToSeek: true,
      autoScroll: false,
      autoCenter: false,
      hideScrollbar: true,
    };
    if (split) {
      options.splitChannels = [
        {
          waveColor: cssColor(style, '--wave-caller', '#93b4e6'),
          progressColor: cssColor(style, '--wave-caller-progress', '#0a5bc4'),
        },
        {
          waveColor: cssColor(style, '--wave-agent', '#9ccfac'),
          progressColor: cssColor(style, '--wave-agent-progress', '#16733a'),
        },
      ];
    }
    wave.dataset.lanes = split ? '2' : '1';
    var surfer = window.WaveSurfer.create(options);
    surfer.once('redrawcomplete', function () {
      performance.mark('player:waveform-drawn');
      setWave('drawn', '');
    });
    return surfer;
  }

  function loadWaveform() {
    var candidates = [];
    if (root.dataset.splitPeaksUrl) candidates.push(root.dataset.splitPeaksUrl);
    if (root.dataset.peaksUrl) candidates.push(root.dataset.peaksUrl);
    if (!candidates.length) return;
    var attempt = function (index) {
      if (index >= candidates.length) {
        setWave('failed', 'Waveform unavailable; the recording plays as usual.');
        return;
      }
      fetchJson(candidates[index])
        .then(function (doc) {
          performance.mark('player:peaks');
          draw(parsePeaks(doc));
        })
        .catch(function (error) {
          console.warn('player: waveform not drawn:', error && error.message);
          attempt(index + 1);
        });
    };
    attempt(0);
  }

  showTime();
  showPlaying();
  loadWaveform();
})();
