-- wrk: 16 pipelined GET requests per write, as TechEmpower's plaintext
-- test sends them.
init = function(args)
  local batch = {}
  for i = 1, 16 do
    batch[i] = wrk.format(nil, "/")
  end
  pipelined = table.concat(batch)
end

request = function()
  return pipelined
end
