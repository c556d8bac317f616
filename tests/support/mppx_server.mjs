// A paid API built with mppx (the TypeScript reference implementation of MPP),
// on node:http, for Teller's tests: a second, independent counterparty next to
// pympp's server. Test use only; loopback only.
//
//   node mppx_server.mjs '<json config>'
//
// config: {rpcUrl, chainId, realm, secretKey, currency, routes: {path: route}}
//   route (tempo): {method: "tempo", amount, recipient, splits?, supportedModes?, expiresInS?, description?}
//   route (evm):   {method: "evm", amount, recipient, currency, name, version}  (EIP-3009 charge;
//                  settled by submitting transferWithAuthorization from config.relayerKey, a test key)
// It prints "listening <port>" once it serves; errors mppx swallows into an
// opaque 500 are written to stderr (the tests read it when a payment fails).
import * as http from 'node:http'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
// mppx and viem are pinned in tools/chain (installed by ./run test).
const pinned = createRequire(join(root, 'tools', 'chain', 'package.json'))
const load = (name) => import(pathToFileURL(pinned.resolve(name)).href)
const { Mppx, tempo, evm } = await load('mppx/server')
const { createClient, createPublicClient, createWalletClient, http: httpTransport } = await load('viem')
const { privateKeyToAccount } = await load('viem/accounts')
const { tempo: tempoChain } = await load('viem/tempo/chains')

const config = JSON.parse(process.argv[2])
const chain = { ...tempoChain, id: config.chainId }
// The local chain instead of mppx's built-in RPC map (which knows only Tempo's mainnet and testnet).
const getClient = () => createClient({ chain, transport: httpTransport(config.rpcUrl) })

const TRANSFER_WITH_AUTHORIZATION = [{
  type: 'function', name: 'transferWithAuthorization', stateMutability: 'nonpayable', outputs: [],
  inputs: ['from', 'to', 'value', 'validAfter', 'validBefore', 'nonce', 'signature'].map((name, i) => ({
    name, type: ['address', 'address', 'uint256', 'uint256', 'uint256', 'bytes32', 'bytes'][i],
  })),
}]

async function settleOnChain(token, p) {
  const wallet = createWalletClient({
    account: privateKeyToAccount(config.relayerKey), transport: httpTransport(config.rpcUrl),
  })
  const hash = await wallet.writeContract({
    address: token, abi: TRANSFER_WITH_AUTHORIZATION, functionName: 'transferWithAuthorization', chain: null,
    args: [p.from, p.to, BigInt(p.value), BigInt(p.validAfter), BigInt(p.validBefore), p.nonce, p.signature],
  })
  const receipt = await createPublicClient({ transport: httpTransport(config.rpcUrl) })
    .waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success') throw new Error(`transferWithAuthorization ${hash} reverted`)
  return { reference: hash }
}

const handlers = new Map()
for (const [path, route] of Object.entries(config.routes)) {
  let method
  const options = { amount: route.amount, recipient: route.recipient }
  if (route.method === 'evm') {
    method = evm.charge({
      currency: route.currency, recipient: route.recipient, chainId: config.chainId,
      authorization: { name: route.name, version: route.version }, decimals: 6,
      settle: (authorization) => settleOnChain(route.currency, authorization.payload),
    })
  } else {
    method = tempo.charge({ currency: config.currency, recipient: route.recipient, chainId: config.chainId, getClient })
    if (route.splits) options.splits = route.splits
    if (route.supportedModes) options.supportedModes = route.supportedModes
  }
  if (route.description) options.description = route.description
  const mppx = Mppx.create({ methods: [method], realm: config.realm, secretKey: config.secretKey })
  handlers.set(path, { mppx, options, route })
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1')
  const entry = handlers.get(url.pathname)
  if (!entry) {
    res.writeHead(404).end()
    return
  }
  const { mppx, options, route } = entry
  try {
    const call = { ...options }
    if (route.expiresInS !== undefined) call.expires = new Date(Date.now() + route.expiresInS * 1000).toISOString()
    const result = await Mppx.toNodeListener(mppx.charge(call))(req, res)
    if (result.status === 402) {
      console.error(`mppx-server: 402 ${url.pathname} auth=${req.headers.authorization ? 'yes' : 'no'}`)
      return
    }
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ paid: true }))
  } catch (error) {
    console.error(`mppx-server: error on ${url.pathname}:`, error)
    if (!res.headersSent) res.writeHead(500)
    res.end()
  }
})

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`)
})
