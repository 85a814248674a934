#!/usr/bin/env node
// The `cp-md5` client profile (docs/client-profiles.md): stands for the clients of the old
// chinaport-proxy (Go): `POST /rpc` with a card method, signed with X-Timestamp and an MD5
// X-Signature. A minimal example, Node.js, built-in modules only (http, https, crypto).
//
//   node examples/cp_md5_client.js "text to sign"
//
// Environment: SIGNPLATFORM_URL (default http://127.0.0.1:8000), SIGNPLATFORM_SECRET (the App
// Secret of the access ID that is the cp-md5 profile's default; no access ID is sent).
// Prints the platform's JSON answer
// {"_method": ..., "_status": "00", "_args": {"Result": true, "Data": [signature, certNo], "Error": []}};
// on an error answer it prints it on stderr with the HTTP status and exits with status 1.
//
// Note: MD5, and no nonce (the platform refuses a second identical request inside the time
// window, ±3 s by default); new clients should use the native request signing (docs/signing-api.md).
'use strict';

const crypto = require('crypto');
const http = require('http');
const https = require('https');

function main(argv) {
  if (argv.length !== 1) {
    console.error('usage: node cp_md5_client.js "text to sign"');
    process.exitCode = 2;
    return;
  }
  const baseUrl = (process.env.SIGNPLATFORM_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
  const secret = process.env.SIGNPLATFORM_SECRET || '';
  if (!secret) {
    console.error('set SIGNPLATFORM_SECRET');
    process.exitCode = 2;
    return;
  }

  const url = new URL(baseUrl + '/rpc');
  const method = 'POST';
  // The passwd is the old proxy's card PIN: the platform ignores it (the PIN is the device's).
  const body = Buffer.from(JSON.stringify({
    _method: 'cus-sec_SpcSignDataAsPEM',
    args: { inData: argv[0], passwd: '88888888' },
  }), 'utf8'); // these exact bytes are hashed and sent
  const timestamp = String(Date.now()); // Unix milliseconds
  // MD5(METHOD + PATH (without the query) + TIMESTAMP + BODY + APP_SECRET), lowercase hex.
  const signature = crypto.createHash('md5')
    .update(Buffer.from(method + url.pathname + timestamp, 'utf8'))
    .update(body)
    .update(Buffer.from(secret, 'utf8'))
    .digest('hex');

  const request = (url.protocol === 'https:' ? https : http).request(url, {
    method,
    timeout: 60000,
    headers: {
      'Content-Type': 'application/json',
      'Content-Length': body.length,
      'X-Timestamp': timestamp,
      'X-Signature': signature,
    },
  }, (response) => {
    const chunks = [];
    response.on('data', (chunk) => chunks.push(chunk));
    response.on('end', () => {
      const answer = Buffer.concat(chunks).toString('utf8');
      if (response.statusCode >= 400) {
        // {"error": "..."}, or the card's refusal: the envelope with "Result": false
        console.error(`HTTP ${response.statusCode}: ${answer}`);
        process.exitCode = 1;
        return;
      }
      console.log(answer);
    });
  });
  request.on('timeout', () => request.destroy(new Error('timed out')));
  request.on('error', (error) => {
    console.error(`cannot reach ${baseUrl}: ${error.message}`);
    process.exitCode = 1;
  });
  request.end(body);
}

main(process.argv.slice(2));
