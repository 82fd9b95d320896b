# shellcheck shell=sh
# Kamal's `kamal proxy boot` from its boot_config files, word for word.
# shellcheck disable=SC2046 # the files hold options to split into words
mkdir -p .kamal/proxy/apps-config && echo $(cat .kamal/proxy/options 2> /dev/null || echo "--publish 80:80 --publish 443:443 --log-opt max-size=10m") $(cat .kamal/proxy/image 2> /dev/null || echo "basecamp/kamal-proxy"):$(cat .kamal/proxy/image_version 2> /dev/null || echo "v0.9.2") $(cat .kamal/proxy/run_command 2> /dev/null || echo "") | xargs docker run --name kamal-proxy --network kamal --detach --restart unless-stopped --volume kamal-proxy-config:/home/kamal-proxy/.config/kamal-proxy --volume "$PWD/.kamal/proxy/apps-config:/home/kamal-proxy/.apps-config"
