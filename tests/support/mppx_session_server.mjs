// mppx's session server (TIP-1034 v2 payment channels) on node:http, for Teller's
// tests: the counterparty a payer opens channels with. Test use only; loopback only.
//
//   node mppx_session_server.mjs '<json config>'
//
// config: {rpcUrl, chainId, realm, secretKey, currency, escrowContract, serverKey,
//          recipient, amount, suggestedDeposit, unitType}
//   rpcUrl is the escrow proxy (testbed/escrow_proxy.py), not anvil itself: the test
//   escrow needs the proxy's two emulated precompile privileges.
//   serverKey (an anvil dev key) is the channel's operator: it sends the settle/close
//   transactions (mppx requires their sender to be the payee or the operator), so the
//   payee `recipient` pays no fees and its balance moves only by what the channel pays it.
// Routes: GET /stream/K is a metered SSE stream of K events, one tick (`amount`) each,
// vouchers requested in-band; any other path costs `amount` (display units, 6 decimals)
// per request and answers JSON {paid: true, n} with mppx's Payment-Receipt header.
// Prints "listening <port>" once it serves; mppx's errors go to stderr.
import * as http from 'node:http'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const pinned = createRequire(join(root, 'tools', 'chain', 'package.json'))
const load = (name) => import(pathToFileURL(pinned.resolve(name)).href)
const { Mppx, tempo } = await load('mppx/server')
const { createClient, http: httpTransport } = await load('viem')
const { privateKeyToAccount } = await load('viem/accounts')
const { tempo: tempoChain } = await load('viem/tempo/chains')

const config = JSON.parse(process.argv[2])
const chain = { ...tempoChain, id: config.chainId }
const account = privateKeyToAccount(config.serverKey)
const getClient = () => createClient({ chain, transport: httpTransport(config.rpcUrl), account })

const method = tempo.session({
  account, getClient, chainId: config.chainId, currency: config.currency, recipient: config.recipient,
  escrowContract: config.escrowContract, operator: account.address, decimals: 6, unitType: config.unitType ?? 'request',
  amount: config.amount, ...(config.suggestedDeposit ? { suggestedDeposit: config.suggestedDeposit } : {}),
})
const mppx = Mppx.create({ methods: [method], realm: config.realm, secretKey: config.secretKey })
// The metered stream: mppx's SSE transport charges one tick (`amount`) per emitted event
// and asks the payer for the next voucher in-band when the channel's vouchers run short.
const streamMethod = tempo.session({
  account, getClient, chainId: config.chainId, currency: config.currency, recipient: config.recipient,
  escrowContract: config.escrowContract, operator: account.address, decimals: 6, unitType: 'token',
  amount: config.amount, sse: true,
  ...(config.suggestedDeposit ? { suggestedDeposit: config.suggestedDeposit } : {}),
})
const streamMppx = Mppx.create({ methods: [streamMethod], realm: config.realm, secretKey: config.secretKey })

function webRequest(req) {
  const headers = new Headers()
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers.set(name, Array.isArray(value) ? value.join(', ') : value)
  }
  const controller = new AbortController()
  req.on('close', () => controller.abort())
  // mppx tells a voucher-only POST from a content request by its having no body and no
  // query string, so a bodiless request must reach it without one.
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD'
    && (Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined)
  return new Request(new URL(req.url, 'http://127.0.0.1'), {
    method: req.method, headers, signal: controller.signal,
    ...(hasBody ? { body: req, duplex: 'half' } : {}),
  })
}

async function sendWeb(res, response) {
  res.writeHead(response.status, Object.fromEntries(response.headers))
  if (!response.body) return res.end()
  for await (const chunk of response.body) res.write(chunk)
  res.end()
}

// GET /stream/K: K paid SSE events ("token 1" .. "token K"). K is in the path, not a
// query: mppx serves a POST with a query string as content, not as a voucher top-up.
async function stream(req, res) {
  const n = Number(new URL(req.url, 'http://127.0.0.1').pathname.split('/')[2] ?? '10')
  const result = await streamMppx.session({ amount: config.amount, unitType: 'token' })(webRequest(req))
  if (result.status === 402) {
    console.error(`mppx-session: mppx answered ${req.method} ${req.url} with ${result.challenge.status}`)
    return sendWeb(res, result.challenge)
  }
  // A credential that only tops up the stream's vouchers (POSTed by the payer while the
  // stream runs) or manages the channel is answered by mppx itself, without a body of ours.
  let management
  try {
    management = result.withReceipt()
  } catch (error) {
    if (!String(error?.message).includes('requires a response')) throw error
  }
  if (management) {
    console.error(`mppx-session: mppx answered ${req.method} ${req.url} with ${management.status}`)
    return sendWeb(res, management)
  }
  async function* tokens() {
    for (let i = 1; i <= n; i++) yield `token ${i}`
  }
  return sendWeb(res, result.withReceipt(tokens()))
}
let served = 0

// One stderr line per credential received ("mppx-session: credential <json>") with the
// decoded payload minus signatures and transactions: what a payer sent, as the tests see it.
function trace(req) {
  const auth = req.headers.authorization
  if (!auth?.startsWith('Payment ')) return
  try {
    const credential = JSON.parse(Buffer.from(auth.slice(8), 'base64url').toString())
    const { signature, transaction, descriptor, ...rest } = credential.payload ?? {}
    console.error(`mppx-session: credential ${JSON.stringify({ ...rest, source: credential.source,
      challengeKeys: Object.keys(credential.challenge ?? {}), method: req.method,
      hasSignature: Boolean(signature), hasTransaction: Boolean(transaction), hasDescriptor: Boolean(descriptor) })}`)
  } catch (error) {
    console.error(`mppx-session: undecodable credential: ${error}`)
  }
}

const server = http.createServer(async (req, res) => {
  trace(req)
  try {
    if (new URL(req.url, 'http://127.0.0.1').pathname.startsWith('/stream/')) return await stream(req, res)
    const result = await Mppx.toNodeListener(mppx.session({ amount: config.amount, unitType: config.unitType ?? 'request' }))(req, res)
    if (result.status === 402) {
      console.error(`mppx-session: mppx answered ${req.method} ${req.url} with ${res.statusCode} (credential: ${req.headers.authorization ? "yes" : "no"})`)

      return
    }
    if (res.writableEnded) return
    served += 1
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ paid: true, n: served }))
  } catch (error) {
    console.error(`mppx-session: error on ${req.url}:`, error)
    if (!res.headersSent) res.writeHead(500)
    res.end()
  }
})

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`)
})
